/* Dashboard behaviour: confirm dialogs, charts from JSON blocks, polling of live sections.
   Loaded from our own origin (the CSP forbids inline scripts). */
"use strict";
(function () {
  const PALETTE = ["#1f5fbf", "#d9730d", "#1b7f3b", "#b3261e", "#7b3fb5", "#0f8b8d", "#8a6d00", "#c2185b"];
  const charts = new Map();

  function readJSON(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function datasets(series, kind) {
    return series.map((s, i) => ({
      label: s.label, data: s.data, borderColor: PALETTE[i % PALETTE.length],
      backgroundColor: PALETTE[i % PALETTE.length] + (kind === "bar" ? "cc" : "33"),
      spanGaps: true, tension: 0.15, pointRadius: 3, borderWidth: 2,
    }));
  }

  function draw(canvas, data) {
    const kind = canvas.dataset.chart || "line";
    const percent = canvas.dataset.percent === "true";
    const old = charts.get(canvas.id);
    if (old) {
      old.data.labels = data.labels;
      old.data.datasets = datasets(data.series, kind);
      old.update("none");
      return;
    }
    const ticks = percent ? { callback: (v) => (v * 100).toFixed(0) + "%" } : {};
    const scaleY = { beginAtZero: kind === "bar", ticks };
    if (canvas.dataset.min) scaleY.min = Number(canvas.dataset.min);
    if (canvas.dataset.max) scaleY.max = Number(canvas.dataset.max);
    if (canvas.dataset.stacked === "true") scaleY.stacked = true;
    charts.set(canvas.id, new window.Chart(canvas, {
      type: kind,
      data: { labels: data.labels, datasets: datasets(data.series, kind) },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        scales: { y: scaleY, x: { stacked: canvas.dataset.stacked === "true" } },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12 } },
          tooltip: percent ? { callbacks: { label: (c) => c.dataset.label + ": " + (c.parsed.y * 100).toFixed(1) + "%" } } : {},
        },
      },
    }));
  }

  function drawAll(root) {
    if (!window.Chart) return;
    root.querySelectorAll("canvas[data-source]").forEach((canvas) => {
      const data = readJSON(canvas.dataset.source);
      if (data) draw(canvas, data);
    });
  }

  /* A section marked data-poll="URL" is replaced by the same section fetched from URL
     every data-every seconds while the page is visible (server-rendered, so no client templates). */
  function poll(section) {
    const every = Number(section.dataset.every || 3) * 1000;
    async function tick() {
      if (!document.hidden) {
        try {
          const reply = await fetch(section.dataset.poll, { credentials: "same-origin", headers: { Accept: "text/html" } });
          if (reply.redirected && reply.url.endsWith("/login")) { window.location.reload(); return; }  // session ended
          if (reply.ok) {
            const doc = new DOMParser().parseFromString(await reply.text(), "text/html");
            const fresh = doc.getElementById(section.id);
            if (fresh) {
              section.querySelectorAll("canvas[data-source]").forEach((c) => { charts.get(c.id)?.destroy(); charts.delete(c.id); });
              section.innerHTML = fresh.innerHTML;
              drawAll(section);
              if (!fresh.dataset.poll) return;  // nothing live any more: stop asking
            }
          }
        } catch (err) { /* the hub restarting: try again next tick */ }
      }
      setTimeout(tick, every);
    }
    setTimeout(tick, every);
  }

  document.addEventListener("submit", (event) => {
    const message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  document.addEventListener("DOMContentLoaded", () => {
    drawAll(document);
    document.querySelectorAll("[data-poll]").forEach(poll);
  });
})();
