// R3's dashboard: draws each <canvas data-plot="ID"> with Chart.js from the JSON in <script id="ID">
// (the server computed every number), asks before sending a form that has data-confirm, and sends a
// form that has data-autosubmit (the scenario selector) as soon as one of its fields changes.
"use strict";

function axes(spec) {
  const y = { beginAtZero: true, title: { display: Boolean(spec.unit), text: spec.unit } };
  if (spec.unit === "%") y.max = 100;
  if (spec.unit === "score") y.max = 1;
  const scales = { x: { ticks: { maxTicksLimit: 8, maxRotation: 0 } }, y };
  if (spec.datasets.some((d) => d.yAxisID === "kl")) {
    scales.kl = { position: "right", beginAtZero: true, grid: { drawOnChartArea: false },
                  title: { display: true, text: "KL" } };
  }
  return scales;
}

function draw(canvas) {
  const spec = JSON.parse(document.getElementById(canvas.dataset.plot).textContent);
  new Chart(canvas, {
    type: spec.type || "line",  // or "bar" (the canary's statistics), a dataset of its own type in it (the boundary)
    data: { labels: spec.labels, datasets: spec.datasets.map((d) => ({ pointRadius: 2, spanGaps: false, ...d })) },
    options: {
      animation: false,  // drawn at once: what a screenshot or a test sees is the final plot
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: axes(spec),
      plugins: { legend: { position: "bottom" } },
    },
  });
  canvas.dataset.drawn = "true";
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  for (const form of document.querySelectorAll("form[data-autosubmit]")) {
    form.addEventListener("change", () => form.requestSubmit());
  }
  for (const canvas of document.querySelectorAll("canvas[data-plot]")) draw(canvas);
});
