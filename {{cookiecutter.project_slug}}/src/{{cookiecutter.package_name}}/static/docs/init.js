// Starts Swagger UI on the /docs page. A file of its own, not an inline script, so
// that the page's Content-Security-Policy can refuse all inline code (script-src 'self').
"use strict";

const root = document.getElementById("swagger-ui");

window.ui = SwaggerUIBundle({
  url: root.dataset.specUrl, // /openapi.json, from the page's data-spec-url attribute
  domNode: root,
  // BaseLayout, without the standalone preset: its top bar injects an inline <style>.
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  // Never send the document to an outside validator.
  validatorUrl: null,
  // The key given to "Authorize" stays in this page's memory: never in localStorage.
  persistAuthorization: false,
  displayRequestDuration: true,
});
