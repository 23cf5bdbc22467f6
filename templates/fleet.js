// Refresh the table in place; keep the sort the user chose.
setInterval(function () {
  fetch('/fleet/rows' + window.location.search, {credentials: 'same-origin'})
    .then(function (r) { if (r.ok && r.url.indexOf('/login') < 0) { return r.text(); } throw new Error(r.status); })
    .then(function (html) {
      document.getElementById('fleet-table').innerHTML = html;
      document.getElementById('refreshed').textContent = 'updated ' + new Date().toLocaleTimeString();
    })
    .catch(function () { document.getElementById('refreshed').textContent = 'refresh failed; retrying'; });
}, 30000);
