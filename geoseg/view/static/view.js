// geoseg view: the input in true colour, the class map over it, the legend and class areas.
(function () {
  const params = new URLSearchParams(window.location.search);
  const map = L.map("map", { zoomSnap: 0.25, attributionControl: false });
  const opacity = document.getElementById("opacity");
  const showInput = document.getElementById("show-input");
  if (params.has("opacity")) opacity.value = params.get("opacity");
  if (params.get("input") === "0") showInput.checked = false;
  const inputs = [], classes = [];
  fetch("/api/map").then((r) => r.json()).then((info) => {
    let bounds = null;
    const only = params.get("scene");
    for (const s of info.scenes) {
      if (only && s.name !== only) continue;
      const b = L.latLngBounds(s.bounds);
      bounds = bounds ? bounds.extend(b) : b;
      if (s.input) {
        inputs.push(L.tileLayer(`/tiles/input/${encodeURIComponent(s.name)}/{z}/{x}/{y}.png`,
                                { bounds: b, maxNativeZoom: 18, maxZoom: 22 }));
      }
      classes.push(L.tileLayer(`/tiles/classes/${encodeURIComponent(s.name)}/{z}/{x}/{y}.png`,
                               { bounds: b, maxNativeZoom: 18, maxZoom: 22, opacity: +opacity.value }));
    }
    if (showInput.checked) inputs.forEach((l) => l.addTo(map));
    classes.forEach((l) => l.addTo(map));
    if (bounds) map.fitBounds(bounds);
    const body = document.querySelector("#legend tbody");
    for (const c of info.classes) {
      const row = document.createElement("tr");
      const area = c.area_ha == null ? "-" : c.area_ha.toLocaleString(undefined, { maximumFractionDigits: 1 });
      row.innerHTML = `<td><span class="swatch" style="background:${c.color}"></span></td>` +
                      `<td>${c.name}</td><td class="area">${area}</td>`;
      body.appendChild(row);
    }
    document.getElementById("scenes").textContent = `${info.scenes.length} scene(s)`;
    document.body.dataset.ready = "1";
  });
  opacity.addEventListener("input", () => classes.forEach((l) => l.setOpacity(+opacity.value)));
  showInput.addEventListener("change", () => {
    inputs.forEach((l) => (showInput.checked ? l.addTo(map).bringToBack() : map.removeLayer(l)));
  });
})();
