// Refresh each [data-live] block from its URL every 5 s: the overview's counts, a running job's progress.
// Without JavaScript the page is the same, as of its last load.
(function () {
  "use strict";
  function refresh(block) {
    fetch(block.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) { if (html !== null) { block.innerHTML = html; } })
      .catch(function () { /* keep the last numbers; try again next time */ });
  }
  document.querySelectorAll("[data-live]").forEach(function (block) {
    setInterval(function () { refresh(block); }, 5000);
  });
})();
