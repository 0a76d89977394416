// Veil dashboard: small enhancements only. Every page works without this file.
// Text is only ever inserted with textContent: attack payloads are displayed.
"use strict";

(function () {
  // Times in the visitor's own time zone (the page says UTC without script).
  function localTimes(root) {
    var formatter = new Intl.DateTimeFormat(undefined, {
      year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit"
    });
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when.getTime())) {
        el.title = el.textContent;
        el.textContent = formatter.format(when);
      }
    });
  }

  // Forms that ask before doing something that cannot be undone.
  function confirmations(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) {
          event.preventDefault();
        }
      });
    });
  }

  // "Copy" buttons for values shown once (a new API token).
  function copyButtons(root) {
    root.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var source = document.getElementById(button.getAttribute("data-copy"));
        if (!source || !navigator.clipboard) {
          return;
        }
        navigator.clipboard.writeText(source.textContent.trim()).then(function () {
          button.textContent = "Copied";
        }, function () {
          button.textContent = "Select and copy";
        });
      });
    });
  }

  // For the pages' scripts: JSON requests with the page's CSRF token.
  window.veil = {
    csrfToken: function () {
      var meta = document.querySelector('meta[name="csrf-token"]');
      return meta ? meta.getAttribute("content") : "";
    },
    api: function (method, path, body) {
      var options = {
        method: method,
        credentials: "same-origin",
        headers: {"Accept": "application/json", "X-CSRF-Token": window.veil.csrfToken()}
      };
      if (body !== undefined) {
        options.headers["Content-Type"] = "application/json";
        options.body = JSON.stringify(body);
      }
      return fetch(path, options).then(function (response) {
        if (response.status === 204) {
          return null;
        }
        return response.json().then(function (data) {
          if (!response.ok) {
            var error = new Error(data.error ? data.error.message : response.statusText);
            error.response = data;
            throw error;
          }
          return data;
        });
      });
    },
    text: function (tag, value, className) {
      var el = document.createElement(tag);
      el.textContent = value === null || value === undefined ? "" : String(value);
      if (className) {
        el.className = className;
      }
      return el;
    }
  };

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    confirmations(document);
    copyButtons(document);
  });
})();
