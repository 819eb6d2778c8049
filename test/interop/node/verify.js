// Independent check of an agentauthz signed response: the RFC 9421
// signature with the npm http-message-signatures package, the RFC 9530
// Content-Digest with Node's own crypto. Input on stdin (JSON):
//   {"jwk": {...}, "request": {"method","url","headers"}, "response": {"status","headers"}, "body_base64": "..."}
// Output: one JSON line {"signature": true|false, "digest": true|false|null, "error"?}.
// Exit 0 when both hold, 1 when either fails, 2 on an error.
'use strict';
const crypto = require('crypto');
const { httpbis, createVerifier } = require('http-message-signatures');

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (c) => { input += c; });
process.stdin.on('end', async () => {
  try {
    const j = JSON.parse(input);
    const key = crypto.createPublicKey({ key: j.jwk, format: 'jwk' });
    const verifier = createVerifier(key, 'ed25519');
    let keyid = null;
    const ok = await httpbis.verifyMessage({
      keyLookup: async (params) => {
        keyid = params.keyid;
        return params.keyid === j.jwk.kid ? { id: j.jwk.kid, algs: ['ed25519'], verify: verifier } : null;
      },
    }, j.response, j.request);
    let digest = null;
    const cd = Object.entries(j.response.headers).find(([k]) => k.toLowerCase() === 'content-digest');
    if (cd) {
      const m = /sha-256=:([A-Za-z0-9+/=]+):/.exec(cd[1]);
      const sum = crypto.createHash('sha256').update(Buffer.from(j.body_base64 || '', 'base64')).digest('base64');
      digest = !!m && m[1] === sum;
    }
    process.stdout.write(JSON.stringify({ signature: ok === true, digest, keyid }) + '\n');
    process.exit(ok === true && digest !== false ? 0 : 1);
  } catch (e) {
    process.stdout.write(JSON.stringify({ signature: false, digest: null, error: String(e && e.message || e) }) + '\n');
    process.exit(e && /signature|verif/i.test(String(e.message)) ? 1 : 2);
  }
});
