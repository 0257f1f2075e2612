/*
 * auth/: who a connection is (JWT verification, this file) and how many sockets a `sub` may hold
 * (limits.ts: local counts, or leases in Redis shared by the nodes).
 *
 * Lifecycle: the authenticator is made once per hub (a JWKS is fetched lazily and cached by
 * jose); Redis leases are renewed while a socket lives and released on close, and expire with a
 * node that dies. Invariants: algorithms are pinned to the one configured key kind, `none` never
 * passes, a token must carry `exp`, and claims are validated and never wider than they name.
 * While Redis is down the limiter counts locally: degraded, never refusing everyone.
 */
import { SignJWT, createRemoteJWKSet, errors, importSPKI, jwtVerify, type JWTVerifyGetKey, type KeyObject } from 'jose';
import { z } from 'zod';
import type { Config } from '../config/index.ts';
import { type Claims, parseId } from '../events/topics.ts';
import { parseDuration } from '../config/index.ts';

/**
 * An id claim: a positive number that is a safe integer (a larger JSON number has already
 * been rounded by the time anyone reads it: refused, never taken for its neighbour), or a
 * decimal string up to the bigint range (leading zeros dropped). Held as the canonical text.
 */
const Id = z.union([
  z.number().int().positive().refine(Number.isSafeInteger, 'ids of 2^53 and above must be strings').transform(String),
  z
    .string()
    .regex(/^[0-9]{1,40}$/)
    .transform((s) => parseId(s.replace(/^0+(?=.)/, '')))
    .refine((id): id is string => id !== undefined && id !== '0', 'not a bigint id'),
]);

/** Claims are outside input: validated, and never wider than what they name. */
const ClaimsSchema = z.object({
  sub: z.string().min(1).max(200).regex(/^\S+$/, 'sub must not contain whitespace'),
  role: z.string().max(64).optional(),
  elections: z.array(Id).max(10_000).optional(),
  committees: z.array(Id).max(10_000).optional(),
  exp: z.number(),
});

export type AuthResult = { ok: true; claims: Claims } | { ok: false; reason: string };

export type Authenticator = { verify(token: string | undefined): Promise<AuthResult> };

const ASYMMETRIC: Record<string, string> = { rsa: 'RS256', ec: 'ES256', ed25519: 'EdDSA' };

function reasonOf(err: unknown): string {
  if (err instanceof errors.JWTExpired) return 'expired';
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.claim === 'nbf' || err.claim === 'iat') return 'not_yet_valid';
    if (err.claim === 'aud') return 'bad_audience';
    if (err.claim === 'iss') return 'bad_issuer';
    return 'bad_claims';
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return 'bad_algorithm';
  if (err instanceof errors.JWSSignatureVerificationFailed) return 'bad_signature';
  if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys) return 'unknown_key';
  if (err instanceof errors.JWKSTimeout) return 'jwks_unavailable';
  if (err instanceof errors.JOSENotSupported) return 'bad_algorithm';
  return 'malformed';
}

/**
 * Verifies tokens against the one configured key source, with algorithms pinned to that
 * key's kind: an HS256 token is refused when a public key is configured (algorithm
 * confusion), `none` is never accepted. A token must carry `exp` (reason `missing_exp`).
 */
export async function createAuthenticator(config: Config): Promise<Authenticator> {
  let key: Uint8Array | KeyObject | CryptoKey | JWTVerifyGetKey;
  let algorithms: string[];
  if (config.JWT_SECRET) {
    // Imported once: handing jose the raw bytes makes it import the key on every verify
    // (a third of an upgrade's CPU in the connection-rate benchmark).
    key = await crypto.subtle.importKey(
      'raw',
      new TextEncoder().encode(config.JWT_SECRET),
      { name: 'HMAC', hash: 'SHA-256' },
      false,
      ['verify'],
    );
    algorithms = ['HS256'];
  } else if (config.JWT_PUBLIC_KEY) {
    const alg = ASYMMETRIC[config.JWT_PUBLIC_KEY.type] ?? 'RS256';
    key = await importSPKI(config.JWT_PUBLIC_KEY.pem, alg);
    algorithms = [alg];
  } else if (config.JWKS_URL) {
    key = createRemoteJWKSet(new URL(config.JWKS_URL), {
      timeoutDuration: 3000,
      cooldownDuration: 30_000,
      cacheMaxAge: 600_000,
    });
    algorithms = ['RS256', 'ES256', 'EdDSA'];
  } else {
    throw new Error('no JWT key source configured');
  }
  const options = {
    algorithms,
    clockTolerance: Math.round(config.JWT_CLOCK_TOLERANCE / 1000),
    ...(config.JWT_ISSUER ? { issuer: config.JWT_ISSUER } : {}),
    ...(config.JWT_AUDIENCE ? { audience: config.JWT_AUDIENCE } : {}),
  };
  return {
    async verify(token) {
      if (!token) return { ok: false, reason: 'missing' };
      if (token.length > 8192) return { ok: false, reason: 'malformed' };
      try {
        const { payload } =
          typeof key === 'function' ? await jwtVerify(token, key, options) : await jwtVerify(token, key, options);
        // A token without exp would be valid forever, and so would its socket: refused.
        // (jose has already checked that an exp present is a number and not past.)
        if (payload.exp === undefined) return { ok: false, reason: 'missing_exp' };
        const parsed = ClaimsSchema.safeParse(payload);
        if (!parsed.success) return { ok: false, reason: 'bad_claims' };
        const c = parsed.data;
        return {
          ok: true,
          claims: {
            sub: c.sub,
            role: c.role,
            elections: c.elections ?? [],
            committees: c.committees ?? [],
            exp: c.exp,
          },
        };
      } catch (err) {
        return { ok: false, reason: reasonOf(err) };
      }
    },
  };
}

export type TokenRequest = {
  sub: string;
  role?: string;
  /** Ids: numbers (safe integers) or decimal strings (any bigint). */
  elections?: Array<number | string>;
  committees?: Array<number | string>;
  ttl?: string;
  issuer?: string;
  audience?: string;
};

/** Signs an HS256 token (the `token` command; tests). */
export async function signToken(secret: string, req: TokenRequest): Promise<string> {
  const ttlMs = parseDuration(req.ttl ?? '1h');
  if (ttlMs === undefined) throw new Error(`bad --ttl ${req.ttl}`);
  const claims: Record<string, unknown> = {};
  if (req.role) claims.role = req.role;
  if (req.elections?.length) claims.elections = req.elections;
  if (req.committees?.length) claims.committees = req.committees;
  let jwt = new SignJWT(claims)
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(req.sub)
    .setIssuedAt()
    .setExpirationTime(Math.floor((Date.now() + ttlMs) / 1000));
  if (req.issuer) jwt = jwt.setIssuer(req.issuer);
  if (req.audience) jwt = jwt.setAudience(req.audience);
  return jwt.sign(new TextEncoder().encode(secret));
}
