// apiauth dashboard: small enhancements; every page works without them.
(function () {
  "use strict";

  // After enable/rotate the page shows the new token once, at the POST's URL. Point the
  // address bar at the page itself so that a reload shows it masked instead of posting again.
  var canonical = document.body.getAttribute("data-canonical-path");
  if (canonical && window.history && window.history.replaceState) {
    window.history.replaceState(null, "", canonical);
  }

  function copyText(text, button) {
    var done = function () {
      var label = button.firstChild;
      var before = label.nodeValue;
      label.nodeValue = "Copied";
      window.setTimeout(function () { label.nodeValue = before; }, 1600);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () {});
      return;
    }
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); done(); } catch (e) { /* select it by hand */ }
    document.body.removeChild(area);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (source) copyText(source.textContent, button);
  });

  // Keep "n of m selected" in a provider's scope summary in step with its checkboxes.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.matches || !box.matches(".scopes input[type=checkbox]")) return;
    var details = box.closest("details.scopes");
    var count = details && details.querySelector("summary .muted");
    if (!count) return;
    var boxes = details.querySelectorAll("input[type=checkbox]");
    var ticked = details.querySelectorAll("input[type=checkbox]:checked");
    count.textContent = "· " + ticked.length + " of " + boxes.length + " selected";
  });

  // Filter a provider list as the person types (the same rows `?q=` and `?category=` give
  // without JavaScript): every word must be in a row's name, catalog name or category.
  function filterProviders(targetId) {
    var target = document.getElementById(targetId);
    if (!target) return;
    var input = document.querySelector("input[data-filter='" + targetId + "']");
    var select = document.querySelector("select[data-filter-category='" + targetId + "']");
    var words = (input ? input.value : "").toLowerCase().split(/\s+/).filter(Boolean);
    var category = select ? select.value : "";
    var shown = 0;
    target.querySelectorAll(".provider-group").forEach(function (group) {
      var inGroup = 0;
      group.querySelectorAll("li.provider").forEach(function (row) {
        var text = row.getAttribute("data-search") || "";
        var ok = (!category || row.getAttribute("data-category") === category) &&
          words.every(function (word) { return text.indexOf(word) !== -1; });
        row.hidden = !ok;
        if (ok) inGroup += 1;
      });
      group.hidden = inGroup === 0;
      var count = group.querySelector(".group-title .muted");
      if (count) count.textContent = String(inGroup);
      shown += inGroup;
    });
    var none = target.querySelector(".no-match");
    if (none) none.hidden = shown !== 0;
  }

  document.addEventListener("input", function (event) {
    var id = event.target.getAttribute && event.target.getAttribute("data-filter");
    if (id) filterProviders(id);
  });
  document.addEventListener("change", function (event) {
    var id = event.target.getAttribute && event.target.getAttribute("data-filter-category");
    if (id) filterProviders(id);
  });
})();
