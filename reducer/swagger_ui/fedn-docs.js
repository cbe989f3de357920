// Swagger UI for the reducer: /api/v1/openapi.json needs a token, so the page asks for one first
// (kept in this tab's sessionStorage only), fetches the document with it and pre-authorizes every
// "Try it out" call with the same bearer token. With tokens off, no token is asked for.
(function () {
  "use strict";
  var KEY = "fedn-api-token";
  var form = document.getElementById("fedn-token-form");
  var input = document.getElementById("fedn-token");
  var reason = document.getElementById("fedn-token-reason");

  function ask(why) {
    reason.textContent = why;
    form.hidden = false;
    input.focus();
  }

  function show(spec, token) {
    form.hidden = true;
    var ui = SwaggerUIBundle({
      spec: spec,
      dom_id: "#swagger-ui",
      validatorUrl: null, // never call validator.swagger.io: clusters are often offline
      deepLinking: true,
    });
    if (token) {
      ui.preauthorizeApiKey("bearer", token);
    }
  }

  function load(token) {
    var headers = token ? { Authorization: "Bearer " + token } : {};
    fetch("openapi.json", { headers: headers, credentials: "omit" })
      .then(function (response) {
        if (response.status === 401 || response.status === 403) {
          sessionStorage.removeItem(KEY);
          return response.json().then(function (body) {
            ask((token ? "That token was refused: " : "The API document needs a token. ") + (body.detail || ""));
          });
        }
        if (!response.ok) {
          ask("The reducer answered " + response.status + " for openapi.json.");
          return;
        }
        return response.json().then(function (spec) {
          show(spec, token);
        });
      })
      .catch(function (err) {
        ask("Cannot reach the reducer: " + err);
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var token = input.value.trim();
    input.value = "";
    if (token) {
      sessionStorage.setItem(KEY, token);
    }
    load(token);
  });

  // Without a stored token, ask the open health route whether tokens are on before asking for the
  // document, rather than being refused it.
  var stored = sessionStorage.getItem(KEY);
  if (stored) {
    load(stored);
  } else {
    fetch("health", { credentials: "omit" })
      .then(function (response) {
        return response.json();
      })
      .then(function (health) {
        if (health.tokens === false) {
          load("");
        } else {
          ask("The API document needs a token.");
        }
      })
      .catch(function (err) {
        ask("Cannot reach the reducer: " + err);
      });
  }
})();
