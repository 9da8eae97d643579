// Managed by SAMS (components/monitoring/health.py): GET /health/<check> asks the blackbox exporter's
// probe for that check (nginx's internal /_probe/<check>) and answers 200 when probe_success is 1,
// else 503, with one line of JSON: {"check": "smtp", "status": "ok", "seconds": 0.042}.
// An exporter that does not answer is a failed check too (nginx's 502 is not probe_success 1).

function check(r) {
    var name = r.uri.substring(r.uri.lastIndexOf('/') + 1);

    function answer(ok, seconds) {
        r.headersOut['Content-Type'] = 'application/json';
        // A monitor polling it wants this check, not a cached one.
        r.headersOut['Cache-Control'] = 'no-store';
        var body = {check: name, status: ok ? 'ok' : 'fail', seconds: seconds};
        r.return(ok ? 200 : 503, JSON.stringify(body) + '\n');
    }

    r.subrequest('/_probe/' + name).then(function (reply) {
        var text = reply.responseText || '';
        var took = /^probe_duration_seconds ([0-9.eE+-]+)$/m.exec(text);
        var seconds = took ? Math.round(Number(took[1]) * 1000) / 1000 : null;
        answer(reply.status === 200 && /^probe_success 1$/m.test(text), seconds);
    }).catch(function () {
        answer(false, null);
    });
}

export default {check};
