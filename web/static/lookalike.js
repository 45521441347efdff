// Lookalike pages: search by photo, add products, and live job progress.
// Plain browser JavaScript, no build step. Every request goes to the JSON API; its error
// messages ({"error": {"code", "message"}}) are shown in the page as they are.
"use strict";

const POLL_MS = 500;
const FINISHED = new Set(["succeeded", "failed"]);
const TOKEN_KEY = "lookalike.apiToken";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- talking to the API -------------------------------------------------------------------

function authHeaders() {
  const input = document.querySelector("[data-token-input]");
  return input && input.value ? { Authorization: `Bearer ${input.value}` } : {};
}

class ApiError extends Error {
  constructor(message, body) {
    super(message);
    this.body = body;
  }
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null; // a proxy's HTML error page, say: fall back to the status line
  }
}

async function postForm(url, form) {
  return sendRequest(url, "POST", form);
}

async function sendRequest(url, method, body) {
  let response;
  try {
    response = await fetch(url, { method, body, headers: authHeaders() });
  } catch (err) {
    throw new ApiError(`Could not reach the server (${err.message}).`, null);
  }
  const answer = await readJson(response);
  if (!response.ok) {
    const message =
      answer && answer.error ? answer.error.message : `The server answered ${response.status}.`;
    throw new ApiError(message, answer);
  }
  return answer;
}

// Polls a job until it finishes, calling onUpdate with each state. A few failed polls in a
// row (a restart of the web app, a dropped connection) are retried before giving up.
async function followJob(statusUrl, onUpdate) {
  let failures = 0;
  for (;;) {
    let job = null;
    try {
      const response = await fetch(statusUrl, { headers: { Accept: "application/json" } });
      job = await readJson(response);
      if (!response.ok) {
        throw new ApiError(job && job.error ? job.error.message : `HTTP ${response.status}`, job);
      }
      failures = 0;
    } catch (err) {
      failures += 1;
      if (failures >= 5) throw err;
    }
    if (job) {
      onUpdate(job);
      if (FINISHED.has(job.state)) return job;
    }
    await sleep(POLL_MS);
  }
}

// --- shared bits of the pages -------------------------------------------------------------

// SQLite keeps timestamps without a zone; they are UTC.
function parseTime(text) {
  if (!text) return null;
  return new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : `${text}Z`);
}

function formatSeconds(seconds) {
  if (seconds === null || Number.isNaN(seconds)) return "-";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const whole = Math.round(seconds);
  return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
}

function jobSeconds(job) {
  const started = parseTime(job.started_at);
  if (!started) return null;
  const end = parseTime(job.finished_at) || new Date();
  return Math.max(0, (end - started) / 1000);
}

function setProgress(progress, job) {
  const { done, total } = job.progress;
  progress.max = total || 1;
  progress.value = total ? done : job.state === "succeeded" ? 1 : 0;
  progress.textContent = `${done} / ${total}`;
}

function fillUrl(pattern, id) {
  return pattern.replace("__ID__", encodeURIComponent(id));
}

function errorList(errors) {
  const list = document.createElement("ul");
  list.className = "photo-errors";
  for (const e of errors) {
    const item = document.createElement("li");
    const what = document.createElement("strong");
    what.textContent = e.product_id || e.file;
    item.append(what, `: ${e.message || e.error}`);
    list.append(item);
  }
  return list;
}

function showError(box, message, rejected) {
  box.replaceChildren();
  const text = document.createElement("p");
  text.textContent = message;
  box.append(text);
  if (rejected && rejected.length) box.append(errorList(rejected));
  box.hidden = false;
}

function restoreToken() {
  const input = document.querySelector("[data-token-input]");
  if (input) input.value = sessionStorage.getItem(TOKEN_KEY) || "";
}

function setupTokenField() {
  const input = document.querySelector("[data-token-input]");
  if (!input) return;
  restoreToken();
  input.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, input.value));
}

// Dropping files on the zone acts like choosing them with its file input.
function setupDropZone(zone, onFiles) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer.files.length) onFiles(Array.from(event.dataTransfer.files));
  });
}

// --- search by photo ----------------------------------------------------------------------

function renderMatches(list, neighbours, form) {
  const template = document.getElementById("match-card");
  list.replaceChildren(
    ...neighbours.map((match) => {
      const card = template.content.firstElementChild.cloneNode(true);
      const name = match.productDisplayName || `Product ${match.id}`;
      card.querySelector("a").href = fillUrl(form.dataset.productUrl, match.id);
      const img = card.querySelector("img");
      // Thumbnails, as the server-rendered grids show them: never the original photo.
      const photo = fillUrl(form.dataset.imageUrl, match.id);
      img.src = `${photo}?w=180`;
      img.srcset = `${photo}?w=180 1x, ${photo}?w=360 2x`;
      img.alt = name;
      card.querySelector(".card-name").textContent = name;
      card.querySelector(".rank").textContent = `#${match.rank}`;
      card.querySelector(".score-value").textContent = match.score.toFixed(4);
      const width = Math.max(0, Math.min(1, match.score)) * 100;
      card.querySelector(".bar > rect").setAttribute("width", `${width.toFixed(1)}%`);
      return card;
    }),
  );
}

function setupSearch(form) {
  const input = form.querySelector('input[type="file"]');
  const preview = form.querySelector(".preview");
  const status = document.getElementById("search-status");
  const statusText = status.querySelector(".status-text");
  const progress = status.querySelector("progress");
  const errorBox = document.getElementById("search-error");
  const results = document.getElementById("search-results");
  let previewUrl = null;
  let current = 0; // a newer search makes an older one's updates stale

  async function run(file) {
    const mine = ++current;
    errorBox.hidden = true;
    results.hidden = true;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.alt = `Your photo: ${file.name}`;
    // A file the browser cannot show (not an image, say) gets no broken preview.
    preview.hidden = true;
    preview.onload = () => {
      preview.hidden = false;
    };
    status.hidden = false;
    status.dataset.state = "uploading";
    statusText.textContent = `Sending ${file.name}…`;
    progress.removeAttribute("value"); // indeterminate while uploading
    const data = new FormData();
    data.append("image", file, file.name);
    try {
      const accepted = await postForm(form.dataset.api, data);
      const started = performance.now();
      const job = await followJob(accepted.status_url, (update) => {
        if (mine !== current) return;
        status.dataset.state = update.state;
        const waited = ((performance.now() - started) / 1000).toFixed(1);
        statusText.textContent =
          update.state === "queued"
            ? `Waiting for a worker… ${waited} s`
            : `Comparing with the catalogue… ${waited} s`;
        setProgress(progress, update);
      });
      if (mine !== current) return;
      if (job.state === "failed") throw new ApiError(job.error || "The search failed.", job);
      const neighbours = (job.result && job.result.neighbours) || [];
      statusText.textContent = neighbours.length
        ? `Found ${neighbours.length} matches in ${formatSeconds(jobSeconds(job))}.`
        : "No matches: the catalogue has no indexed products yet.";
      renderMatches(results.querySelector("ol"), neighbours, form);
      results.hidden = neighbours.length === 0;
    } catch (err) {
      if (mine !== current) return;
      status.hidden = true;
      status.dataset.state = "failed";
      showError(
        errorBox,
        `Could not search with ${file.name}: ${err.message}`,
        err.body && err.body.error && err.body.error.rejected,
      );
    }
  }

  input.addEventListener("change", () => {
    if (input.files.length) run(input.files[0]);
  });
  setupDropZone(form.querySelector("[data-drop-target]"), (files) => run(files[0]));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.files.length) run(input.files[0]);
  });
}

// --- add products -------------------------------------------------------------------------

function stem(fileName) {
  const dot = fileName.lastIndexOf(".");
  return dot > 0 ? fileName.slice(0, dot) : fileName;
}

function jobCard(accepted, count, form) {
  const card = document.createElement("li");
  card.className = "job-card";
  card.dataset.jobId = accepted.job_id;
  const title = document.createElement("p");
  const link = document.createElement("a");
  link.href = `${form.dataset.jobsUrl}#job-${accepted.job_id}`;
  link.textContent = `Job ${accepted.job_id.slice(0, 8)}`;
  title.append(link, ` · ${count} photo${count === 1 ? "" : "s"} sent`);
  const state = document.createElement("span");
  state.className = "state state-queued";
  state.textContent = "queued";
  const progress = document.createElement("progress");
  progress.max = Math.max(1, accepted.product_ids.length);
  progress.value = 0;
  progress.setAttribute("aria-label", `Progress of job ${accepted.job_id.slice(0, 8)}`);
  const counter = document.createElement("span");
  counter.className = "count";
  title.append(" ", state);
  card.append(title, progress, counter);
  if (accepted.rejected.length) {
    const note = document.createElement("p");
    note.textContent = "Refused on arrival:";
    card.append(note, errorList(accepted.rejected));
  }
  return { card, state, progress, counter };
}

// The fields the add page sets on every photo of an upload; an empty one is left out.
function sharedMetadata(form) {
  const meta = {};
  for (const input of form.querySelectorAll("[data-meta-field]")) {
    const value = input.value.trim();
    if (value) meta[input.dataset.metaField] = value;
  }
  return meta;
}

function setupAdd(form) {
  const input = form.querySelector('input[type="file"]');
  const table = form.querySelector("table.files");
  const rows = table.querySelector("tbody");
  const button = form.querySelector('button[type="submit"]');
  const errorBox = document.getElementById("add-error");
  const jobs = document.getElementById("add-jobs");
  let chosen = [];

  function choose(files) {
    chosen = files;
    rows.replaceChildren(
      ...chosen.map((file, n) => {
        const row = document.createElement("tr");
        const photo = document.createElement("td");
        const thumb = document.createElement("img");
        thumb.src = URL.createObjectURL(file);
        thumb.alt = file.name;
        thumb.width = 48;
        thumb.height = 64;
        thumb.loading = "lazy";
        photo.append(thumb, ` ${file.name}`);
        const idCell = document.createElement("td");
        const id = document.createElement("input");
        id.name = "id";
        id.placeholder = stem(file.name);
        id.setAttribute("aria-label", `Product id for ${file.name}`);
        id.id = `add-id-${n}`;
        idCell.append(id);
        const nameCell = document.createElement("td");
        const name = document.createElement("input");
        name.name = "name";
        name.setAttribute("aria-label", `Name for ${file.name}`);
        nameCell.append(name);
        row.append(photo, idCell, nameCell);
        return row;
      }),
    );
    table.hidden = chosen.length === 0;
    button.disabled = chosen.length === 0;
    button.textContent =
      chosen.length === 0
        ? "Add photos"
        : chosen.length === 1
          ? "Add 1 photo"
          : `Add ${chosen.length} photos`;
  }

  input.addEventListener("change", () => choose(Array.from(input.files)));
  setupDropZone(form.querySelector("[data-drop-target]"), (files) => {
    input.value = "";
    choose(files);
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!chosen.length) return;
    errorBox.hidden = true;
    const data = new FormData();
    const ids = rows.querySelectorAll('input[name="id"]');
    const names = rows.querySelectorAll('input[name="name"]');
    const shared = sharedMetadata(form);
    chosen.forEach((file, n) => {
      data.append("images", file, file.name);
      data.append("id", ids[n].value.trim());
      const name = names[n].value.trim();
      const meta = name ? { ...shared, productDisplayName: name } : shared;
      // No field set sends no metadata: a replaced product keeps its own (or the CSV's).
      data.append("metadata", Object.keys(meta).length ? JSON.stringify(meta) : "");
    });
    const sheet = form.querySelector('input[name="metadata_csv"]');
    if (sheet && sheet.files.length) data.append("metadata_csv", sheet.files[0]);
    const count = chosen.length;
    button.disabled = true;
    button.textContent = "Sending…";
    let accepted;
    try {
      accepted = await postForm(form.dataset.api, data);
    } catch (err) {
      showError(errorBox, err.message, err.body && err.body.error && err.body.error.rejected);
      choose(chosen);
      return;
    }
    form.reset();
    restoreToken();
    choose([]);
    const view = jobCard(accepted, count, form);
    jobs.prepend(view.card);
    try {
      const job = await followJob(accepted.status_url, (update) => {
        view.state.textContent = update.state;
        view.state.className = `state state-${update.state}`;
        view.card.dataset.state = update.state;
        setProgress(view.progress, update);
        view.counter.textContent = `${update.progress.done} / ${update.progress.total}`;
      });
      const summary = document.createElement("p");
      if (job.state === "succeeded") {
        const failed = new Set(job.errors.map((e) => e.product_id));
        const added = accepted.product_ids.filter((id) => !failed.has(id));
        summary.append(`Indexed in ${formatSeconds(jobSeconds(job))}: `);
        added.forEach((id, n) => {
          const link = document.createElement("a");
          link.href = fillUrl(form.dataset.productUrl, id);
          link.textContent = id;
          summary.append(n ? ", " : "", link);
        });
        if (!added.length) summary.append("nothing");
      } else {
        summary.textContent = `Failed: ${job.error || "see the Jobs page"}`;
      }
      view.card.append(summary);
      if (job.errors.length) {
        const note = document.createElement("p");
        note.textContent = "Could not be indexed:";
        view.card.append(note, errorList(job.errors));
      }
    } catch (err) {
      const note = document.createElement("p");
      note.textContent = `Lost track of this job: ${err.message}`;
      view.card.append(note);
    }
  });
}

// --- editing a product --------------------------------------------------------------------

function setupProductEdit(section) {
  const replace = document.getElementById("replace-form");
  const photo = replace.querySelector('input[type="file"]');
  const replaceButton = replace.querySelector("button");
  const remove = document.getElementById("delete-form");
  const status = document.getElementById("edit-status");
  const errorBox = document.getElementById("edit-error");
  const { productId, productName } = section.dataset;
  const buttons = [replaceButton, remove.querySelector("button")];

  photo.addEventListener("change", () => {
    replaceButton.disabled = photo.files.length === 0;
  });

  // Sends one change, follows its job, and then calls done (the job succeeded).
  async function change(what, send, done) {
    errorBox.hidden = true;
    buttons.forEach((b) => (b.disabled = true));
    status.textContent = `${what}: sending…`;
    try {
      const accepted = await send();
      const job = await followJob(accepted.status_url, (update) => {
        status.textContent = `${what}: ${update.state} (${update.progress.done} / ${update.progress.total})`;
      });
      if (job.state !== "succeeded") {
        throw new ApiError(job.error || "the job failed; see the Jobs page", null);
      }
      if (job.errors.length) throw new ApiError(job.errors[0].message || job.errors[0].error, null);
      status.textContent = `${what}: done.`;
      done();
    } catch (err) {
      status.textContent = "";
      showError(errorBox, `${what} failed: ${err.message}`, err.body && err.body.error && err.body.error.rejected);
      buttons.forEach((b) => (b.disabled = false));
      replaceButton.disabled = photo.files.length === 0;
    }
  }

  replace.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!photo.files.length) return;
    const data = new FormData();
    data.append("images", photo.files[0], photo.files[0].name);
    data.append("id", productId); // no metadata: the product keeps its own
    // Pages are served from a read cache at most data-fresh-after seconds behind a write.
    const fresh = Number(section.dataset.freshAfter || 0) * 1000;
    change(
      "Replacing the photo",
      () => postForm(section.dataset.addApi, data),
      () => sleep(fresh + 100).then(() => window.location.reload()),
    );
  });

  remove.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!window.confirm(`Delete ${productName} (id ${productId}) from the catalogue?`)) return;
    change(
      "Deleting",
      () => sendRequest(section.dataset.deleteApi, "DELETE"),
      () => window.location.assign(section.dataset.catalogueUrl),
    );
  });
}

// --- jobs ---------------------------------------------------------------------------------

function followJobRow(row) {
  const state = row.querySelector(".state");
  const progress = row.querySelector("progress");
  const counter = row.querySelector(".count");
  const duration = row.querySelector(".duration");
  const errors = row.querySelector(".errors");
  followJob(row.dataset.statusUrl, (job) => {
    row.dataset.state = job.state;
    state.textContent = job.state;
    state.className = `state state-${job.state}`;
    setProgress(progress, job);
    counter.textContent = `${job.progress.done} / ${job.progress.total}`;
    duration.textContent = formatSeconds(jobSeconds(job));
    if (job.errors.length) {
      const details = document.createElement("details");
      details.open = job.errors.length <= 3;
      const summary = document.createElement("summary");
      summary.textContent = `${job.errors.length} photo${job.errors.length === 1 ? "" : "s"} failed`;
      details.append(summary, errorList(job.errors));
      errors.replaceChildren(details);
    }
  }).catch(() => {
    /* the row keeps its last known state; a reload shows the rest */
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupTokenField();
  const search = document.getElementById("search-form");
  if (search) setupSearch(search);
  const add = document.getElementById("add-form");
  if (add) setupAdd(add);
  const edit = document.getElementById("product-edit");
  if (edit) setupProductEdit(edit);
  document
    .querySelectorAll('tr.job[data-state="queued"], tr.job[data-state="running"]')
    .forEach(followJobRow);
});
