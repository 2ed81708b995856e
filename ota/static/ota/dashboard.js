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

  // Delegated: the buttons are replaced with the live part of the page.
  function dialogs() {
    document.addEventListener("click", function (event) {
      var button = event.target.closest("button.dash-action, button.dash-cancel");
      if (!button) { return; }
      if (button.classList.contains("dash-action")) {
        document.getElementById(button.dataset.dialog).showModal();
      } else {
        button.closest("dialog").close();
      }
    });
  }

  // Each part of a page that changes (class dash-live-part) is fetched again from its
  // data-url every few seconds and replaced in place.
  function live() {
    document.querySelectorAll(".dash-live-part").forEach(function (box) {
      function refresh() {
        if (document.querySelector("dialog[open]")) {  // never wipe a reason being typed
          window.setTimeout(refresh, REFRESH_MS);
          return;
        }
        fetch(box.dataset.url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
          .then(function (response) { return response.ok ? response.text() : null; })
          .then(function (html) {
            if (html !== null && !document.querySelector("dialog[open]")) {
              box.innerHTML = html;
              localTimes(box);
            }
          })
          .catch(function () { /* the next tick tries again */ })
          .finally(function () { window.setTimeout(refresh, REFRESH_MS); });
      }
      window.setTimeout(refresh, REFRESH_MS);
    });
  }

  // The New rollout form: show the phased or the A/B fields, and what the selection
  // targets (asked of the server a moment after the operator stops typing).
  function rolloutForm() {
    var form = document.getElementById("dash-rollout-form");
    if (!form) { return; }
    var preview = document.getElementById("dash-preview");
    var timer = null;
    function strategy() {
      var ab = form.querySelector("input[name=strategy]:checked").value === "ab";
      form.querySelectorAll(".dash-ab").forEach(function (el) { el.hidden = !ab; });
      form.querySelectorAll(".dash-phased").forEach(function (el) { el.hidden = ab; });
    }
    function ask() {
      var query = new URLSearchParams(new FormData(form));
      query.delete("csrfmiddlewaretoken");
      fetch(form.dataset.preview + "?" + query.toString(), { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (body) {
          if (body) {
            preview.textContent = body.text;
            preview.dataset.targets = body.targets;
            preview.classList.toggle("dash-preview-error", body.error !== "");
          }
        })
        .catch(function () { /* the next change asks again */ });
    }
    function later() {
      window.clearTimeout(timer);
      timer = window.setTimeout(ask, 300);
    }
    form.addEventListener("input", later);
    form.addEventListener("change", function () { strategy(); later(); });
    strategy();
    ask();
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    dialogs();
    live();
    rolloutForm();
  });
})();
