//! Topic and event-type names: 1–128 characters from `A–Z a–z 0–9 . _ - ~ :`.

use std::fmt;
use std::sync::Arc;

/// The longest name herald accepts.
pub const MAX_NAME_LEN: usize = 128;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("may only contain A-Z a-z 0-9 . _ - ~ :")]
    BadCharacter,
}

fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~' | b':'));
    if ok {
        Ok(())
    } else {
        Err(NameError::BadCharacter)
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        ///
        /// Cheap to clone: the text is shared.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Checks `name` against the naming rules.
            pub fn new(name: &str) -> Result<Self, NameError> {
                check(name)?;
                Ok(Self(Arc::from(name)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A validated topic name.
    Topic
);
name_type!(
    /// A validated event type; `message` when the publisher gives none.
    EventType
);

impl EventType {
    /// The type an EventSource assumes when a stream names none.
    pub fn message() -> Self {
        Self(Arc::from("message"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(Topic::new("Az09._-~:").is_ok());
        assert!(Topic::new(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(Topic::new(""), Err(NameError::Empty));
        assert_eq!(Topic::new(&"x".repeat(129)), Err(NameError::TooLong));
        for bad in ["a b", "a/b", "a=b", "a,b", "é", "a\n", "a%20"] {
            assert_eq!(Topic::new(bad), Err(NameError::BadCharacter), "{bad:?}");
        }
    }
}
