// soilcarbon web page: fetch server-rendered fragments with the API key, upload with progress.
"use strict";

const KEY_STORE = "soilcarbon-api-key";
const needsKey = () => document.body.dataset.needsKey === "true";
const apiKey = () => sessionStorage.getItem(KEY_STORE) || "";

function headers() {
  return needsKey() && apiKey() ? { "X-API-Key": apiKey() } : {};
}

function showMessage(text, status, info) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.dataset.status = status || "";
  box.classList.toggle("info", !!info);
  box.hidden = false;
  if (status === 401) {
    const input = document.getElementById("api-key");
    if (input) input.focus();
  }
}

function clearMessage() {
  const box = document.getElementById("message");
  box.hidden = true;
  box.textContent = "";
  box.dataset.status = "";
}

// The readable message of an error answer: the REST API's {"error": "..."}.
function errorText(status, body) {
  try {
    const parsed = JSON.parse(body);
    if (parsed && parsed.error) return parsed.error;
  } catch (e) { /* not JSON */ }
  if (status === 0) return "the server cannot be reached, or it closed the connection (is the upload too large?)";
  return `the server answered ${status}`;
}

async function loadFragment(element) {
  const target = element.tagName === "DETAILS" ? element.querySelector(".fragment") : element;
  let answer;
  try {
    answer = await fetch(element.dataset.fragment, { headers: headers() });
  } catch (e) {
    showMessage("the server cannot be reached: " + e, 0);
    return false;
  }
  const body = await answer.text();
  if (!answer.ok) {
    showMessage(errorText(answer.status, body), answer.status);
    return false;
  }
  const chosen = target.tagName === "SELECT" ? target.value : null;
  target.innerHTML = body;
  if (chosen && [...target.options].some((o) => o.value === chosen)) target.value = chosen;  // a reload keeps the choice
  element.dataset.loaded = "true";
  return true;
}

// Fragments load when the page opens; a <details> fragment when it is first opened.
function loadFragments(root) {
  (root || document).querySelectorAll("[data-fragment]").forEach((element) => {
    if (element.tagName !== "DETAILS" || element.open) loadFragment(element);
  });
}

document.addEventListener("toggle", (event) => {
  const element = event.target;
  if (element.tagName === "DETAILS" && element.dataset.fragment && element.open && element.dataset.loaded !== "true") {
    loadFragment(element);
  }
}, true);

function setupKey() {
  const form = document.getElementById("key-form");
  if (!form) return;
  const input = document.getElementById("api-key");
  const state = document.getElementById("key-state");
  input.value = apiKey();
  state.textContent = apiKey() ? "key set" : "enter the service's key";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, input.value.trim());
    state.textContent = "key set";
    clearMessage();
    document.querySelectorAll("[data-fragment]").forEach((el) => { el.dataset.loaded = ""; });
    loadFragments();
  });
}

function jobId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function setupPredict() {
  const form = document.getElementById("predict-form");
  if (!form) return;
  const button = document.getElementById("predict-button");
  const box = document.getElementById("progress");
  const bar = document.getElementById("progress-bar");
  const text = document.getElementById("progress-text");
  const result = document.getElementById("result");

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearMessage();
    const files = document.getElementById("files").files;
    if (!files.length) {
      showMessage("choose one or more files to predict first", "");
      return;
    }
    const job = jobId();
    const data = new FormData(form);
    data.append("job", job);
    const request = new XMLHttpRequest();
    request.open("POST", "/web/predict");
    Object.entries(headers()).forEach(([k, v]) => request.setRequestHeader(k, v));
    let timer = null;
    const poll = async () => {
      try {
        const answer = await fetch(`/web/progress/${job}`, { headers: headers() });
        if (!answer.ok) return;
        const state = await answer.json();
        const part = state.total ? Math.min(100, Math.round((100 * state.done) / state.total)) : null;
        if (part === null) bar.removeAttribute("value"); else bar.value = part;
        text.textContent = `${state.phase}: ${state.samples} samples` + (part === null ? "" : ` (${part} %)`);
      } catch (e) { /* keep polling */ }
    };
    request.upload.onprogress = (e) => {
      if (e.lengthComputable) {
        bar.value = Math.round((100 * e.loaded) / e.total);
        text.textContent = `uploading: ${Math.round(e.loaded / 1024)} of ${Math.round(e.total / 1024)} kB`;
      }
    };
    request.upload.onload = () => {
      bar.removeAttribute("value");
      text.textContent = "uploaded; reading and scoring";
      timer = setInterval(poll, 400);
    };
    const done = () => {
      if (timer) clearInterval(timer);
      button.disabled = false;
      box.hidden = true;
      form.removeAttribute("aria-busy");
    };
    request.onload = () => {
      done();
      if (request.status === 200) {
        result.innerHTML = request.responseText;
        result.dataset.job = job;
        rememberPredictions(result);
        const heading = result.querySelector("h2");
        if (heading) { heading.tabIndex = -1; heading.focus(); }
      } else {
        result.innerHTML = "";
        showMessage(errorText(request.status, request.responseText), request.status);
      }
    };
    request.onerror = () => {
      done();
      result.innerHTML = "";
      showMessage(errorText(0, ""), 0);
    };
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    box.hidden = false;
    bar.value = 0;
    text.textContent = "uploading";
    request.send(data);
  });
}

// The Predict page's last CSV, kept in the tab for the Stocks page.
const LAST_STORE = "soilcarbon-last-predictions";

function rememberPredictions(result) {
  const link = result.querySelector("#download");
  const uri = result.querySelector("#model-uri");
  if (!link) return;
  try {
    sessionStorage.setItem(LAST_STORE, JSON.stringify({
      data: link.getAttribute("href").split(",", 2)[1], model: uri ? uri.textContent : "",
      samples: result.querySelectorAll("#predictions tbody tr").length }));
  } catch (e) { /* too large for the tab's storage: upload the downloaded file instead */ }
}

function lastPredictions() {
  try { return JSON.parse(sessionStorage.getItem(LAST_STORE) || "null"); } catch (e) { return null; }
}

// A form of the Compare or Stocks page: posted with the key, the answer shown below it.
function setupView(formId, url, check, extend) {
  const form = document.getElementById(formId);
  if (!form) return;
  const button = form.querySelector("button[type=submit]");
  const status = form.querySelector("[aria-live]");
  const result = document.getElementById("result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearMessage();
    const problem = check();
    if (problem) { showMessage(problem, ""); return; }
    const data = new FormData(form);
    extend(data);
    const job = jobId();
    data.append("job", job);
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    status.textContent = "working…";
    const timer = setInterval(async () => {  // the phase of a comparison (a stocks request has none)
      try {
        const answer = await fetch(`/web/progress/${job}`, { headers: headers() });
        const state = answer.ok ? await answer.json() : null;
        if (state && state.phase !== "waiting") {
          status.textContent = `${state.phase}` + (state.samples ? `: ${state.samples} samples` : "") + "…";
        }
      } catch (e) { /* keep polling */ }
    }, 500);
    let answer = null, body = "";
    try {
      answer = await fetch(url, { method: "POST", headers: headers(), body: data });
      body = await answer.text();
    } catch (e) { answer = null; }
    clearInterval(timer);
    button.disabled = false;
    form.removeAttribute("aria-busy");
    status.textContent = "";
    if (answer && answer.ok) {
      result.innerHTML = body;
      const heading = result.querySelector("h2");
      if (heading) { heading.tabIndex = -1; heading.focus(); }
    } else {
      result.innerHTML = "";
      showMessage(errorText(answer ? answer.status : 0, body), answer ? answer.status : 0);
    }
  });
}

function setupCompare() {
  setupView("compare-form", "/web/compare", () => {
    const chosen = document.querySelectorAll("#versions input[name=models]:checked").length;
    return chosen < 2 ? "choose at least two model versions to compare" : "";
  }, () => {});
}

function setupStocks() {
  const box = document.getElementById("use-last-box");
  const last = lastPredictions();
  if (box && last) {
    document.getElementById("last-name").textContent = `${last.samples} samples, ${last.model}`;
    box.hidden = false;
  }
  setupView("stocks-form", "/web/stocks", () => {
    if (!document.getElementById("stocks-samples").files.length) return "choose the samples table first";
    const useLast = document.getElementById("use-last").checked;
    if (!useLast && !document.getElementById("stocks-predictions").files.length) {
      return "choose a predictions CSV (or use the predictions of the Predict page)";
    }
    return "";
  }, (data) => {
    const saved = lastPredictions();
    if (document.getElementById("use-last").checked && saved) {
      const bytes = Uint8Array.from(atob(saved.data), (c) => c.charCodeAt(0));
      data.set("predictions", new Blob([bytes], { type: "text/csv" }), "predictions.csv");
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupKey();
  setupPredict();
  setupCompare();
  setupStocks();
  if (!needsKey() || apiKey()) {
    loadFragments();
  } else {
    showMessage("this service needs an API key: enter it above", "", true);
    document.getElementById("api-key").focus();
  }
});
