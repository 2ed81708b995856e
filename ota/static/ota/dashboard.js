// The operator dashboard's few behaviours: times in the operator's own time zone, a
// confirmation dialog (with a required reason) before each rollout action, and the live
// part of a page refreshed every few seconds without reloading it.
(function () {
  "use strict";
  var REFRESH_MS = 3000;

  function localTimes(root) {
    root.querySelectorAll("time.dash-time").forEach(function (el) {
      var moment = new Date(el.getAttribute("datetime"));
      if (!isNaN(moment)) {
        el.title = el.textContent;
        el.textContent = moment.toLocaleString(undefined, {
          year: "numeric", month: "2-digit", day: "2-digit",
          hour: "2-digit", minute: "2-digit", timeZoneName: "short"
        });
      }
    });
  }

  function dialogs() {
    document.querySelectorAll("button.dash-action").forEach(function (button) {
      var dialog = document.getElementById(button.dataset.dialog);
      button.addEventListener("click", function () { dialog.showModal(); });
      dialog.querySelector(".dash-cancel").addEventListener("click", function () { dialog.close(); });
    });
  }

  function live() {
    var box = document.getElementById("dash-live");
    if (!box) { return; }
    function refresh() {
      fetch(box.dataset.url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          if (html !== null) { box.innerHTML = html; localTimes(box); }
        })
        .catch(function () { /* the next tick tries again */ })
        .finally(function () { window.setTimeout(refresh, REFRESH_MS); });
    }
    window.setTimeout(refresh, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    dialogs();
    live();
  });
})();
