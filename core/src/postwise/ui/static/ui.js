// postwise: a little JavaScript where it helps. Every page reads without it.
(function () {
  "use strict";
  // Live progress of a sending campaign: <div data-progress-url="...">.
  document.querySelectorAll("[data-progress-url]").forEach(function (box) {
    var url = box.getAttribute("data-progress-url");
    var status = box.getAttribute("data-status");
    var justSent = window.location.search.indexOf("sent=1") >= 0;
    if (status === "draft" && !justSent) { return; }
    function tick() {
      fetch(url, {credentials: "same-origin"}).then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) { return; }
          var bar = box.querySelector("progress");
          var text = box.querySelector("[data-progress-text]");
          if (bar) { bar.value = data.percent; bar.textContent = data.percent + "%"; }
          if (text) { text.textContent = data.text; }
          if (!data.done) { setTimeout(tick, 1000); }
          else if (status !== "sent") { window.location.replace(window.location.pathname); }
        }).catch(function () { setTimeout(tick, 3000); });
    }
    tick();
  });
  // Live count of a segment rule: <form data-count-url="..."> with an output[data-count].
  document.querySelectorAll("form[data-count-url]").forEach(function (form) {
    var out = form.querySelector("[data-count]");
    var timer = null;
    form.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        fetch(form.getAttribute("data-count-url"), {method: "POST", credentials: "same-origin", body: new URLSearchParams(new FormData(form))})
          .then(function (r) { return r.json(); })
          .then(function (d) { out.textContent = d.error ? d.error : (d.count + " contacts match"); })
          .catch(function () {});
      }, 400);
    });
  });
})();
