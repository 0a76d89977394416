// Veil dashboard: small enhancements only. Every page works without this file.
// Text is only ever inserted with textContent: attack payloads are displayed.
"use strict";

(function () {
  // Times in the visitor's own time zone (the page says UTC without script).
  var dateFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit"
  });
  var preciseFormat = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit"
  });

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when.getTime())) {
        el.title = el.textContent;
        el.textContent = (el.hasAttribute("data-precise") ? preciseFormat : dateFormat)
          .format(when);
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

  // The live request table of a site's overview: rows arrive over the
  // stream (Server-Sent Events) and are added with textContent only; it
  // pauses while the visitor scrolls into it or presses Pause.
  function liveTable(section) {
    if (!window.EventSource) {
      return;
    }
    var rows = document.getElementById("live-rows");
    var scroller = document.getElementById("live-scroll");
    var toggle = document.getElementById("live-toggle");
    var state = document.getElementById("live-state");
    var pausedNote = document.getElementById("live-paused");
    var empty = document.getElementById("live-empty");
    var site = section.getAttribute("data-site");
    var maxRows = 200;
    var paused = false;
    var held = [];
    var newest = 0;

    rows.querySelectorAll("time[datetime]").forEach(function (el) {
      newest = Math.max(newest, Date.parse(el.getAttribute("datetime")) || 0);
    });

    function say(text) {
      state.textContent = text;
    }

    function bump(id) {
      var counter = document.getElementById(id);
      if (counter) {
        var value = parseInt(counter.textContent.replace(/[^0-9]/g, ""), 10) || 0;
        counter.textContent = (value + 1).toLocaleString();
      }
    }

    function cell(label, child) {
      var td = document.createElement("td");
      td.setAttribute("data-label", label);
      td.appendChild(child);
      return td;
    }

    function verdict(row) {
      var span = document.createElement("span");
      if (row.blocked) {
        span.appendChild(veil.text("span", "blocked", "badge verdict-blocked"));
      } else if (row.classification === "malicious") {
        span.appendChild(veil.text("span", "would block", "badge verdict-would"));
      } else if (row.classification === "suspicious") {
        span.appendChild(veil.text("span", "suspicious", "badge verdict-suspicious"));
      } else {
        span.appendChild(veil.text("span", "—", "muted"));
      }
      if (row.attack_type) {
        span.appendChild(document.createTextNode(" "));
        span.appendChild(veil.text("span", row.attack_type, "attack"));
      }
      return span;
    }

    function build(row) {
      var when = new Date(row.ts);
      var tr = document.createElement("tr");
      tr.className = "live-new" + (row.blocked ? " row-blocked" : "");
      var time = veil.text("time", isNaN(when.getTime()) ? row.ts : preciseFormat.format(when));
      time.setAttribute("datetime", row.ts);
      tr.appendChild(cell("Time", time));
      var request = document.createElement("div");
      request.className = "clamp";
      request.appendChild(veil.text("span", row.method || "", "method"));
      request.appendChild(document.createTextNode(" "));
      var link = document.createElement("a");
      var query = new URLSearchParams();
      if (row.client_ip) {
        query.set("client", row.client_ip);
      }
      if (!isNaN(when.getTime())) {
        query.set("since", new Date(when.getTime() - 1000).toISOString());
        query.set("until", new Date(when.getTime() + 1000).toISOString());
      }
      link.href = "/sites/" + encodeURIComponent(site) + "/requests?" + query.toString();
      link.appendChild(veil.text("span", row.path || "", "path"));
      if (row.query) {
        link.appendChild(veil.text("span", "?" + row.query, "query"));
      }
      request.appendChild(link);
      var requestCell = cell("Request", request);
      requestCell.className = "request-cell";
      tr.appendChild(requestCell);
      var code = row.status ? "code code-" + Math.floor(row.status / 100) + "xx" : "code";
      tr.appendChild(cell("Status", veil.text("span", row.status || "—", code)));
      tr.appendChild(cell("Client", veil.text("code", row.client_ip || "—")));
      tr.appendChild(cell("Verdict", verdict(row)));
      return tr;
    }

    function show(row) {
      var at = Date.parse(row.ts) || 0;
      rows.insertBefore(build(row), rows.firstChild);
      newest = Math.max(newest, at);
      while (rows.children.length > maxRows) {
        rows.removeChild(rows.lastChild);
      }
      empty.hidden = true;
    }

    function setPaused(value) {
      paused = value;
      toggle.textContent = paused ? "Resume" : "Pause";
      toggle.setAttribute("aria-pressed", paused ? "true" : "false");
      say(paused ? "paused" : "as they happen");
      if (!paused) {
        held.forEach(show);
        held = [];
        pausedNote.hidden = true;
        scroller.scrollTop = 0;
      }
    }

    function hold(row) {
      held.push(row);
      if (held.length > maxRows) {
        held.shift();
      }
      pausedNote.hidden = false;
      pausedNote.textContent = "Paused: " + held.length + " new request" +
        (held.length === 1 ? "" : "s") + " waiting. Press Resume (or scroll back to the top)" +
        " to see them; older requests are in the history.";
    }

    function arrive(row) {
      bump("count-requests");
      if (row.blocked) {
        bump("count-blocked");
      }
      if (paused) {
        hold(row);
      } else {
        show(row);
      }
    }

    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      setPaused(!paused);
    });
    scroller.addEventListener("scroll", function () {
      if (scroller.scrollTop > 8 && !paused) {
        setPaused(true);
      } else if (scroller.scrollTop === 0 && paused && held.length) {
        setPaused(false);
      }
    });

    var source = new EventSource(section.getAttribute("data-stream"));
    section.setAttribute("data-live", "connecting");
    source.addEventListener("open", function () {
      section.setAttribute("data-live", "open");
      say(paused ? "paused" : "as they happen");
    });
    source.addEventListener("hydrate", function (event) {
      var data = JSON.parse(event.data);
      data.rows.forEach(function (row) {
        if ((Date.parse(row.ts) || 0) > newest) {
          arrive(row);
        }
      });
      section.setAttribute("data-live", "live");
    });
    source.addEventListener("request", function (event) {
      arrive(JSON.parse(event.data));
    });
    source.addEventListener("gap", function () {
      say("catching up: some requests may be missing here");
    });
    source.addEventListener("end", function () {
      source.close();
      section.setAttribute("data-live", "ended");
      say("stopped");
      pausedNote.hidden = false;
      pausedNote.textContent = "The live view stopped (you may have signed out). Reload the" +
        " page to start it again.";
    });
    source.addEventListener("error", function () {
      if (source.readyState !== EventSource.CLOSED) {
        say("reconnecting…");
      }
    });
    window.addEventListener("pagehide", function () {
      source.close();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    confirmations(document);
    copyButtons(document);
    var live = document.getElementById("live");
    if (live && live.hasAttribute("data-stream")) {
      liveTable(live);
    }
  });
})();
