// Keeps the page live: every 3 s the page is fetched again and its main section replaced, unless the
// operator is typing in a form or the page is hidden. Without JavaScript the page is complete as served.
(function () {
  "use strict";
  var main = document.getElementById("live");
  if (!main || document.getElementById("confirm-form") || document.getElementById("login-form")) return;
  function busy() {
    var active = document.activeElement;
    return document.hidden || (active && (active.tagName === "INPUT" || active.tagName === "SELECT" || active.tagName === "TEXTAREA"));
  }
  function refresh() {
    if (busy()) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (text) {
        if (!text || busy()) return;
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("live");
        if (fresh) { main.innerHTML = fresh.innerHTML; document.body.setAttribute("data-refreshed", String(Date.now())); }
      })
      .catch(function () {});
  }
  setInterval(refresh, 3000);
})();
