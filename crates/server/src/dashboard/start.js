// ------------------------------------------------------------------ start

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refreshNow();
});

$("show-task-topics").addEventListener("change", refreshNow);
wireTokenForm();
wireFollowForm();
wirePublishForm();
wireEnqueueForm();
refresh();
