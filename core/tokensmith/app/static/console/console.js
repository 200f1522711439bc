// The console's only script: the copy buttons beside the client ID and the new secret.
// Served from this origin (the Content-Security-Policy allows no inline script).
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy]");
  if (!button) return;
  var field = document.getElementById(button.getAttribute("data-copy"));
  var status = document.querySelector(".copied");
  function done(text) { if (status) status.textContent = text; }
  field.select();
  if (navigator.clipboard && navigator.clipboard.writeText) {
    navigator.clipboard.writeText(field.value).then(
      function () { done("Copied to the clipboard."); },
      function () { done("Selected: press Ctrl+C to copy."); }
    );
  } else {
    done("Selected: press Ctrl+C to copy.");
  }
});
