//! Query strings, read once into a list of pairs; repeated keys (`topic=a&topic=b`)
//! are kept, which serde's query extractor cannot do.

use crate::error::ApiError;

/// The decoded pairs of a request's query string.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query {
            pairs: raw
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A whole number in `min..=max`, or `default` when absent.
    pub fn integer(
        &self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ApiError> {
        let Some(raw) = self.get(key) else {
            return Ok(default);
        };
        let n: u64 = raw
            .trim()
            .parse()
            .map_err(|_| ApiError::bad_query(key, format!("{raw:?} is not a whole number")))?;
        if !(min..=max).contains(&n) {
            return Err(ApiError::bad_query(
                key,
                format!("must be between {min} and {max}"),
            ));
        }
        Ok(n)
    }

    /// A number of seconds (fractions allowed) in `0..=max`, or `default`
    /// when absent.
    pub fn seconds(&self, key: &'static str, default: f64, max: f64) -> Result<f64, ApiError> {
        let Some(raw) = self.get(key) else {
            return Ok(default);
        };
        let n: f64 = raw
            .trim()
            .parse()
            .map_err(|_| ApiError::bad_query(key, format!("{raw:?} is not a number of seconds")))?;
        if !n.is_finite() || n < 0.0 || n > max {
            return Err(ApiError::bad_query(
                key,
                format!("must be between 0 and {max} seconds"),
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_repeated_keys_and_checks_numbers() {
        let q = Query::parse(Some("topic=a&topic=b%3Ac&limit=5&timeout=x&wait=-1"));
        assert_eq!(q.all("topic").collect::<Vec<_>>(), ["a", "b:c"]);
        assert_eq!(q.integer("limit", 100, 1, 1000).ok(), Some(5));
        assert_eq!(q.integer("missing", 100, 1, 1000).ok(), Some(100));
        assert!(q.seconds("timeout", 30.0, 60.0).is_err());
        assert!(q.seconds("wait", 30.0, 60.0).is_err());
        assert!(
            Query::parse(Some("limit=0"))
                .integer("limit", 100, 1, 1000)
                .is_err()
        );
    }
}
