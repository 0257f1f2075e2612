import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/**
 * Tokens never reach a log line: headers and query strings are redacted, and URLs are
 * logged through `redactUrl` (the query string may carry `?token=`).
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: undefined,
      redact: {
        paths: [
          'token',
          '*.token',
          'authorization',
          '*.authorization',
          'headers.authorization',
          'req.headers.authorization',
          'JWT_SECRET',
          '*.JWT_SECRET',
          'password',
          '*.password',
        ],
        censor: '[redacted]',
      },
    },
    destination,
  );
}

/** Removes the token (and any credential) from a URL or query string before logging. */
export function redactUrl(text: string): string {
  return text
    .replace(/([?&](?:token|access_token|jwt)=)[^&]*/gi, '$1[redacted]')
    .replace(/(\/\/[^:/@]+:)[^@/]*@/, '$1[redacted]@');
}
