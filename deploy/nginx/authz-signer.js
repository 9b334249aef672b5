/*
 * authz-gateway request signer for nginx njs (njs 0.7.0 or later; tested with 0.7.9).
 *
 * Signs what nginx sends to the gateway per app/api/docs/signing.md: RFC 9421
 * hmac-sha256 over @method, @path, @query (when there is a query),
 * content-digest (when there is a body), the identity headers and the client's
 * Idempotency-Key (when it sent one: the gateway acts on it), with an
 * RFC 9530 Content-Digest, a fresh nonce and the secret read from a file.
 *
 * Two modes, each a set of js_set variables (see authz-signer-http.conf):
 *   proxy     nginx proxies the request itself to the gateway ($authz_*)
 *   decision  a request asks the gateway's decision endpoint whether another
 *             request may pass ($authz_decision_*): an auth_request subrequest,
 *             or a forward-auth call from Traefik through this nginx. The
 *             signature also covers the original-method and original-URI headers.
 *
 * Every value of one mode is computed once per request and kept in js_var
 * variables: nginx may evaluate a js_set variable each time it is used, and two
 * evaluations would give Signature and Signature-Input different nonces. The
 * kept values are tagged with what they signed, so an internal redirect to
 * another URI computes them anew instead of reusing a signature for the old one.
 *
 * Fails closed: when the identity is missing or malformed, the key cannot be
 * read, or a body is not in memory, no signature is produced (the gateway then
 * answers 401) and the reason is written to the error log.
 */
import fs from 'fs';
import nodeCrypto from 'crypto';

// The gateway's identity grammar (app/domain/identity.py) and key rules (signing.md §1).
const SUBJECT = /^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$/;
const GROUP = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;
const KEY_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;
const MIN_SECRET_BYTES = 32;
const LABEL = 'sig1';

function sfString(value) {
    return '"' + value.replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
}

function readSecret(r, path) {
    var secret;
    try {
        secret = fs.readFileSync(path);
    } catch (e) {
        r.error('authz-signer: cannot read the key file named by $authz_key_file');
        return null;
    }
    // Like the gateway: the secret is the file's bytes without surrounding ASCII
    // whitespace (Python's bytes.strip(): space, \t, \n, \v, \f, \r).
    var start = 0;
    var end = secret.length;
    while (start < end && isSpace(secret[start])) {
        start++;
    }
    while (end > start && isSpace(secret[end - 1])) {
        end--;
    }
    if (end - start < MIN_SECRET_BYTES) {
        r.error('authz-signer: the key file holds fewer than 32 bytes');
        return null;
    }
    return secret.subarray(start, end);
}

function isSpace(byte) {
    return byte === 0x20 || (byte >= 0x09 && byte <= 0x0d);
}

/*
 * The first of the fields named in $authz_single_fields (comma-separated) that the
 * client's request carries more than once, or null. A sidecar reads its subject and
 * original request from headers, and nginx's $http_* variables keep only the first
 * copy: signed, the gateway would decide on a value another hop may not read.
 */
function repeatedField(r) {
    var names = (r.variables.authz_single_fields || '').toLowerCase().split(',');
    var raw = r.rawHeadersIn;
    for (var n = 0; n < names.length; n++) {
        var name = names[n].trim();
        var seen = 0;
        for (var i = 0; name !== '' && i < raw.length; i++) {
            if (raw[i][0].toLowerCase() === name && ++seen > 1) {
                return name;
            }
        }
    }
    return null;
}

function identity(r) {
    var repeated = repeatedField(r);
    if (repeated !== null) {
        r.error('authz-signer: the request repeats ' + repeated + '; not signing');
        return null;
    }
    var subject = r.variables.authz_user || '';
    if (!SUBJECT.test(subject)) {
        r.error('authz-signer: no well-formed subject in $authz_user; not signing');
        return null;
    }
    var raw = (r.variables.authz_user_groups || '').split(',');
    var groups = [];
    for (var i = 0; i < raw.length; i++) {
        var group = raw[i].trim();
        if (group === '') {
            continue;
        }
        if (!GROUP.test(group)) {
            r.error('authz-signer: malformed group in $authz_user_groups; not signing');
            return null;
        }
        groups.push(group);
    }
    return {subject: subject, groups: groups.join(',')};
}

/*
 * The client's Idempotency-Key as nginx forwards it: '' when there is none, null
 * (do not sign) when there are several (the gateway refuses several anyway).
 */
function idempotencyKey(r) {
    var found = [];
    var raw = r.rawHeadersIn;
    for (var i = 0; i < raw.length; i++) {
        if (raw[i][0].toLowerCase() === 'idempotency-key') {
            found.push(raw[i][1]);
        }
    }
    if (found.length > 1) {
        r.error('authz-signer: several Idempotency-Key fields; not signing');
        return null;
    }
    return found.length === 1 ? found[0] : '';
}

function body(r) {
    // Content-Length 0 and no chunking: no body. Anything else must be in memory
    // (client_body_buffer_size = client_max_body_size in the shipped config).
    var length = r.headersIn['Content-Length'];
    var chunked = /chunked/i.test(r.headersIn['Transfer-Encoding'] || '');
    if (!chunked && (length === undefined || length === '0')) {
        return {bytes: null};
    }
    var bytes = r.requestBuffer;
    if (bytes === undefined) {
        r.error('authz-signer: the request body is not in memory; not signing');
        return null;
    }
    return {bytes: bytes.length > 0 ? bytes : null};
}

/*
 * The RFC 9421 signature over `message` ({method, target, headers: [[name, value]]}).
 * Returns {input, signature} or null; names in `headers` are lower case.
 */
function sign(r, message) {
    var keyId = r.variables.authz_key_id || '';
    if (!KEY_ID.test(keyId)) {
        r.error('authz-signer: $authz_key_id is not a valid key id');
        return null;
    }
    var secret = readSecret(r, r.variables.authz_key_file || '');
    if (secret === null) {
        return null;
    }
    var cut = message.target.indexOf('?');
    var path = cut < 0 ? message.target : message.target.slice(0, cut);
    var query = cut < 0 ? '' : message.target.slice(cut + 1);
    var names = ['@method', '@path'];
    var lines = ['"@method": ' + message.method, '"@path": ' + (path || '/')];
    if (query !== '') {
        names.push('@query');
        lines.push('"@query": ?' + query);
    }
    for (var i = 0; i < message.headers.length; i++) {
        names.push(message.headers[i][0]);
        lines.push('"' + message.headers[i][0] + '": ' + message.headers[i][1]);
    }
    var nonce = Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString('base64url');
    var params = '(' + names.map(sfString).join(' ') + ')'
        + ';created=' + Math.floor(Date.now() / 1000)
        + ';keyid=' + sfString(keyId)
        + ';nonce=' + sfString(nonce)
        + ';alg="hmac-sha256"';
    lines.push('"@signature-params": ' + params);
    var mac = nodeCrypto.createHmac('sha256', secret).update(lines.join('\n')).digest('base64');
    return {input: LABEL + '=' + params, signature: LABEL + '=:' + mac + ':'};
}

/* Everything the proxy mode sends, computed once; '' everywhere when not signing. */
function proxyValues(r) {
    var target = r.variables.authz_target || r.variables.request_uri;
    var tag = r.method + ' ' + target;
    if (r.variables.authz_signed_for === tag) {
        return;
    }
    var values = {subject: '', groups: '', digest: '', input: '', signature: ''};
    var who = identity(r);
    var key = who === null ? null : idempotencyKey(r);
    var sent = key === null ? null : body(r);
    if (sent !== null) {
        var headers = [];
        if (sent.bytes !== null) {
            values.digest = 'sha-256=:'
                + nodeCrypto.createHash('sha256').update(sent.bytes).digest('base64') + ':';
            headers.push(['content-digest', values.digest]);
        }
        headers.push(['x-auth-subject', who.subject]);
        if (who.groups !== '') {
            headers.push(['x-auth-groups', who.groups]);
        }
        if (key !== '') {
            headers.push(['idempotency-key', key]);
        }
        var signed = sign(r, {method: r.method, target: target, headers: headers});
        if (signed !== null) {
            values.subject = who.subject;
            values.groups = who.groups;
            values.input = signed.input;
            values.signature = signed.signature;
        } else {
            values.digest = '';
        }
    }
    store(r, 'authz_p_', values);
    r.variables.authz_signed_for = tag;
}

/*
 * Everything a decision request sends, computed once: an auth_request subrequest
 * (the original method and URI are the client's request's), or a forward-auth
 * sidecar in front of the gateway for Traefik (they come in X-Forwarded-* headers).
 * The names and values are the $authz_original_* variables (authz-signer-http.conf).
 */
function decisionValues(r) {
    var v = r.variables;
    var method = v.authz_original_method_value || '';
    var uri = v.authz_original_uri_value || '';
    var target = v.authz_decision_uri;
    var tag = r.method + ' ' + target + ' for ' + method + ' ' + uri;
    if (v.authz_decision_signed_for === tag) {
        return;
    }
    var values = {subject: '', groups: '', method: '', uri: '', input: '', signature: ''};
    var who = identity(r);
    if (who !== null && (method === '' || uri === '')) {
        r.error('authz-signer: no original method or URI to ask about; not signing');
        who = null;
    }
    if (who !== null) {
        // A decision request has no body (proxy_pass_request_body off): no digest.
        var headers = [
            [v.authz_original_method_header.toLowerCase(), method],
            [v.authz_original_uri_header.toLowerCase(), uri],
            ['x-auth-subject', who.subject],
        ];
        if (who.groups !== '') {
            headers.push(['x-auth-groups', who.groups]);
        }
        var signed = sign(r, {method: r.method, target: target, headers: headers});
        if (signed !== null) {
            values = {
                subject: who.subject,
                groups: who.groups,
                method: method,
                uri: uri,
                input: signed.input,
                signature: signed.signature,
            };
        }
    }
    store(r, 'authz_d_', values);
    v.authz_decision_signed_for = tag;
}

function store(r, prefix, values) {
    for (var name in values) {
        r.variables[prefix + name] = values[name];
    }
}

function proxyGetter(name) {
    return function (r) {
        proxyValues(r);
        return r.variables['authz_p_' + name];
    };
}

function decisionGetter(name) {
    return function (r) {
        decisionValues(r);
        return r.variables['authz_d_' + name];
    };
}

export default {
    subject: proxyGetter('subject'),
    groups: proxyGetter('groups'),
    contentDigest: proxyGetter('digest'),
    signatureInput: proxyGetter('input'),
    signature: proxyGetter('signature'),
    decisionSubject: decisionGetter('subject'),
    decisionGroups: decisionGetter('groups'),
    decisionOriginalMethod: decisionGetter('method'),
    decisionOriginalUri: decisionGetter('uri'),
    decisionSignatureInput: decisionGetter('input'),
    decisionSignature: decisionGetter('signature'),
};
