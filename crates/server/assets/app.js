// fastpatch dashboard: progressive enhancement only; every page works without it.
(function () {
  "use strict";
  // Ask before destructive form posts (the server still checks CSRF and role).
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { e.preventDefault(); }
  });
  document.addEventListener("DOMContentLoaded", function () {
    // Show times in the reader's local zone (UTC stays in the title).
    document.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) { t.title = t.textContent; t.textContent = d.toLocaleString(); }
    });
    // Optional auto-refresh of the overview, remembered per browser.
    var box = document.getElementById("autorefresh");
    if (box) {
      box.checked = window.localStorage.getItem("fp-autorefresh") === "1";
      box.addEventListener("change", function () {
        window.localStorage.setItem("fp-autorefresh", box.checked ? "1" : "0");
      });
      setInterval(function () { if (box.checked) { window.location.reload(); } }, 30000);
    }
  });
})();
