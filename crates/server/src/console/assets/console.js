// Confero console: progressive enhancement only. Every page works without this script;
// it adds the confirmation and invitation pop-ups, live updates from the API's
// server-sent events, and the dependent fields of the incoming-number form.
(() => {
  "use strict";

  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  /** Calls the API with the session cookie and the CSRF token. */
  async function api(method, path, body) {
    const init = {
      method,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, Accept: "application/json" },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = null;
    try { data = await res.json(); } catch (_) { /* empty body */ }
    return { ok: res.ok, status: res.status, data };
  }

  // ---- confirmation pop-up for destructive buttons --------------------------------
  const confirmDialog = $("#confirm-dialog");
  function confirmThen(form, action) {
    if (!confirmDialog || typeof confirmDialog.showModal !== "function") {
      if (window.confirm(form.dataset.confirm)) action();
      return;
    }
    $("#confirm-text").textContent = form.dataset.confirm;
    const button = form.querySelector('button[type="submit"]');
    $("#confirm-ok").textContent = form.dataset.confirmOk || (button ? button.textContent.trim() : "OK");
    $("#confirm-title").textContent = "Are you sure?";
    confirmDialog.returnValue = "";
    confirmDialog.addEventListener("close", function onClose() {
      confirmDialog.removeEventListener("close", onClose);
      if (confirmDialog.returnValue === "ok") action();
    });
    confirmDialog.showModal();
    $("#confirm-ok").focus();
  }

  /** Participant buttons act through the API and leave the page where it is. */
  function participantAction(form) {
    const m = form.getAttribute("action").match(/^\/conferences\/(\d+)\/participants\/(\d+)\/(mute|unmute|kick)$/);
    if (!m) return false;
    api("POST", `/api/v1/conferences/${m[1]}/participants/${m[2]}/${m[3]}`).then((r) => {
      if (!r.ok && r.status !== 404) showStatus(r.data?.error || "That did not work.", true);
      refreshParticipants();
    });
    return true;
  }

  document.addEventListener("submit", (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || form.id === "invite-form" || form.method === "dialog") return;
    const go = () => {
      if (!participantAction(form)) {
        form.dataset.confirmed = "yes";
        form.submit();
      }
    };
    if (form.dataset.confirm && form.dataset.confirmed !== "yes") {
      ev.preventDefault();
      confirmThen(form, go);
    } else if (form.closest("#participants")) {
      ev.preventDefault();
      go();
    }
  });

  // ---- live status banner --------------------------------------------------------------
  const liveStatus = $("#live-status");
  let statusTimer = null;
  function showStatus(text, sticky) {
    if (!liveStatus) return;
    liveStatus.textContent = text;
    liveStatus.hidden = false;
    clearTimeout(statusTimer);
    if (!sticky) statusTimer = setTimeout(() => { liveStatus.hidden = true; }, 4000);
  }
  function hideStatus() {
    if (liveStatus) liveStatus.hidden = true;
  }

  // ---- live updates ---------------------------------------------------------------------
  const roomSection = $('[data-live="room"]');
  let refreshing = false;
  let refreshAgain = false;
  async function refreshParticipants() {
    if (!roomSection) return;
    if (refreshing) { refreshAgain = true; return; }
    refreshing = true;
    try {
      const id = roomSection.dataset.conference;
      const res = await fetch(`/conferences/${id}/participants`, { credentials: "same-origin" });
      if (res.redirected || !res.ok) return;
      const html = await res.text();
      const current = $("#participants");
      if (current) {
        const holder = document.createElement("div");
        holder.innerHTML = html;
        const fresh = holder.firstElementChild;
        // Keep keyboard focus on the same button when rows are redrawn.
        const focused = document.activeElement?.closest?.("form")?.getAttribute("action");
        current.replaceWith(fresh);
        if (focused) fresh.querySelector(`form[action="${CSS.escape(focused)}"] button`)?.focus();
      }
    } catch (_) {
      // The next event retries.
    } finally {
      refreshing = false;
      if (refreshAgain) { refreshAgain = false; refreshParticipants(); }
    }
  }

  function onParticipants(list) {
    const counts = new Map();
    for (const p of list) counts.set(String(p.conference_id), (counts.get(String(p.conference_id)) || 0) + 1);
    for (const cell of $$("[data-count-for]")) {
      cell.textContent = String(counts.get(cell.dataset.countFor) || 0);
    }
    if (roomSection) refreshParticipants();
  }

  function onRegistrations(list) {
    const counts = new Map();
    for (const r of list) counts.set(r.user, (counts.get(r.user) || 0) + 1);
    for (const row of $$("tr[data-aor]")) {
      const cell = $('[data-testid="devices"]', row);
      if (!cell) continue;
      const n = counts.get(row.dataset.aor) || 0;
      cell.textContent = String(n);
      cell.classList.toggle("online", n > 0);
      cell.title = list.filter((r) => r.user === row.dataset.aor)
        .map((r) => `${r.user_agent || "Unknown phone"} — ${String(r.transport || "").toUpperCase()} from ${r.source}`)
        .join("\n");
    }
  }

  function onTrunks(list) {
    for (const t of list) {
      const cell = $(`[data-trunk-status="${t.trunk_id}"]`);
      if (!cell) continue;
      cell.textContent = t.summary;
      cell.dataset.state = t.registration;
    }
  }

  let invitationsListener = null;
  const wantsLive = $("[data-count-for]") || $("tr[data-aor]") || $("#invite-dialog") || $("[data-trunk-status]");
  let source = null;
  function connect() {
    if (!wantsLive || typeof EventSource === "undefined") return;
    source = new EventSource("/api/v1/events");
    let wasDown = false;
    source.addEventListener("open", () => {
      if (wasDown) showStatus("Live updates are back.", false);
      else hideStatus();
      wasDown = false;
    });
    source.addEventListener("error", () => {
      wasDown = true;
      showStatus("Live updates interrupted — reconnecting…", true);
      // EventSource retries by itself, unless the server refused us (signed out).
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(() => {
          fetch("/api/v1/registrations", { credentials: "same-origin" }).then((r) => {
            if (r.status === 401) window.location.assign("/login?next=" + encodeURIComponent(location.pathname));
            else connect();
          }, () => setTimeout(connect, 3000));
        }, 2000);
      }
    });
    const parse = (fn) => (ev) => { try { fn(JSON.parse(ev.data)); } catch (_) { /* ignore */ } };
    source.addEventListener("participants", parse(onParticipants));
    source.addEventListener("registrations", parse(onRegistrations));
    source.addEventListener("trunks", parse(onTrunks));
    source.addEventListener("invitations", parse((list) => { if (invitationsListener) invitationsListener(list); }));
  }
  connect();

  // ---- invitation pop-up -------------------------------------------------------------
  const inviteDialog = $("#invite-dialog");
  if (inviteDialog) {
    const form = $("#invite-form");
    const target = $("#invite-target");
    const error = $("#invite-error");
    const status = $("#invite-status");
    const submit = $("#invite-submit");
    const cancel = $("#invite-cancel");
    let roomId = null;
    let invitation = null;
    let poll = null;

    const TEXT = {
      calling: "Calling…",
      ringing: "Ringing…",
      answered: "Answered: they are in the room.",
      busy: "Busy.",
      no_answer: "No answer.",
      cancelled: "Cancelled.",
    };
    function describe(inv) {
      if (inv.state === "failed") {
        const why = [inv.status, inv.reason].filter((x) => x !== null && x !== undefined && x !== "").join(" ");
        return why ? `Failed: ${why}.` : "Failed.";
      }
      return TEXT[inv.state] || inv.state;
    }
    function show(inv) {
      if (!invitation || inv.id !== invitation) return;
      status.hidden = false;
      status.dataset.state = inv.state;
      status.textContent = `${inv.target}: ${describe(inv)}`;
      const ongoing = inv.state === "calling" || inv.state === "ringing";
      cancel.hidden = !ongoing;
      submit.disabled = ongoing;
      if (!ongoing) stopPolling();
    }
    function stopPolling() {
      if (poll) { clearInterval(poll); poll = null; }
    }
    // Events carry every invitation; polling covers a broken event stream.
    invitationsListener = (list) => { const inv = list.find((i) => i.id === invitation); if (inv) show(inv); };
    function startPolling() {
      stopPolling();
      poll = setInterval(async () => {
        if (!invitation) return stopPolling();
        const r = await api("GET", `/api/v1/invitations/${invitation}`).catch(() => null);
        if (r && r.ok) show(r.data);
      }, 1000);
    }

    function open(button) {
      roomId = button.dataset.invite;
      invitation = null;
      stopPolling();
      $("#invite-room").textContent = button.dataset.room || "";
      form.action = `/conferences/${roomId}/invite`;
      target.value = "";
      error.hidden = true;
      error.textContent = "";
      target.removeAttribute("aria-invalid");
      status.hidden = true;
      status.textContent = "";
      delete status.dataset.state;
      cancel.hidden = true;
      submit.disabled = false;
      inviteDialog.showModal();
      target.focus();
    }

    // Invite is a link (it works without the script) that acts as a button: a button
    // also answers the space bar.
    document.addEventListener("keydown", (ev) => {
      if (ev.key !== " ") return;
      const button = ev.target.closest?.("[data-invite]");
      if (!button) return;
      ev.preventDefault();
      button.click();
    });

    document.addEventListener("click", (ev) => {
      const button = ev.target.closest?.("[data-invite]");
      if (!button || typeof inviteDialog.showModal !== "function") return;
      ev.preventDefault();
      open(button);
    });

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.hidden = true;
      target.removeAttribute("aria-invalid");
      const value = target.value.replace(/[\s().-]/g, "");
      if (!/^\+?\d{1,20}$/.test(value)) {
        error.textContent = "Enter an extension or a phone number: digits, with an optional leading +.";
        error.hidden = false;
        target.setAttribute("aria-invalid", "true");
        target.focus();
        return;
      }
      submit.disabled = true;
      status.hidden = false;
      status.dataset.state = "calling";
      status.textContent = `${value}: Calling…`;
      const r = await api("POST", `/api/v1/conferences/${roomId}/invite`, { target: value }).catch(() => null);
      if (!r || !r.ok) {
        submit.disabled = false;
        status.hidden = true;
        delete status.dataset.state;
        error.textContent = (r && r.data && r.data.error) || "The invitation could not be sent.";
        error.hidden = false;
        target.setAttribute("aria-invalid", "true");
        return;
      }
      invitation = r.data.id;
      show(r.data);
      startPolling();
    });

    cancel.addEventListener("click", async () => {
      if (!invitation) return;
      cancel.disabled = true;
      await api("POST", `/api/v1/invitations/${invitation}/cancel`).catch(() => null);
      cancel.disabled = false;
      const r = await api("GET", `/api/v1/invitations/${invitation}`).catch(() => null);
      if (r && r.ok) show(r.data);
    });

    $("#invite-close").addEventListener("click", () => inviteDialog.close());
    inviteDialog.addEventListener("close", () => { stopPolling(); invitation = null; });
  }

  // ---- phone screens: each table row reads as a card, cells labelled by their column -----
  function labelCells(root = document) {
    for (const table of $$("table.data", root)) {
      const heads = $$("thead th", table).map((th) => th.textContent.trim());
      for (const row of $$("tbody tr", table)) {
        Array.from(row.cells).forEach((td, i) => { if (heads[i]) td.dataset.label = heads[i]; });
      }
    }
  }
  labelCells();
  new MutationObserver(() => labelCells()).observe(document.querySelector("main") || document.body, { childList: true, subtree: true });

  // ---- incoming numbers: show the field that goes with the destination type --------
  for (const form of $$("[data-destination-form]")) {
    const type = $('select[name="type"]', form);
    const sync = () => {
      for (const block of $$("[data-show-for]", form)) {
        const shown = block.dataset.showFor === type.value;
        block.hidden = !shown;
        for (const input of $$("select, input", block)) input.disabled = !shown;
      }
    };
    type.addEventListener("change", sync);
    sync();
  }
})();
