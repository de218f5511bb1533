// A scenecast connect token (an HS256 JWT) minted with node's crypto, no library.
// Usage: SCENECAST_JWT_SECRET=... node mint-token.mjs UID [PAGE...]
import { createHmac } from "node:crypto";

function scenecastToken(secret, uid, pages = [], ttlSecs = 3600) {
  const b64url = (text) => Buffer.from(text).toString("base64url");
  const claims = { sub: String(uid), exp: Math.floor(Date.now() / 1000) + ttlSecs };
  if (pages.length > 0) claims.pages = pages;
  const body = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" })) + "." + b64url(JSON.stringify(claims));
  return body + "." + createHmac("sha256", secret).update(body).digest("base64url");
}

const [uid, ...pages] = process.argv.slice(2);
console.log(scenecastToken(process.env.SCENECAST_JWT_SECRET, uid, pages));
