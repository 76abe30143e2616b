// ------------------------------------------------------------------ publish

function wirePublishForm() {
  $("publish").addEventListener("submit", async (e) => {
    e.preventDefault();
    const topic = $("publish-topic").value.trim();
    const type = $("publish-event").value.trim() || "message";
    if (!NAME.test(topic)) return say("publish-result", "The topic must be 1–128 of A–Z a–z 0–9 . _ - ~ :", true);
    if (!NAME.test(type)) return say("publish-result", "The event type must be 1–128 of A–Z a–z 0–9 . _ - ~ :", true);
    const query = type === "message" ? "" : `?event=${encodeURIComponent(type)}`;
    try {
      const r = await api("POST", topicPath(topic) + query, {
        body: $("publish-data").value,
        type: "text/plain; charset=utf-8",
      });
      const sent = await r.json();
      say("publish-result", `Published ${sent.event} to ${sent.topic} as ${sent.id}`);
      refreshNow();
    } catch (err) {
      say("publish-result", `Not published: ${err.message}`, true);
    }
  });
}
