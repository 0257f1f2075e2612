/*
 * The peers' database side, shared by the ws and socket.io hubs: LISTEN on the hub's channel
 * and, on every notification, read the outbox rows after the last id seen, the way a team
 * would first write it (ordered by id, not by the hub's commit-safe (txid, id) horizon).
 */
import pg from 'pg';

export const TYPES: Record<string, string> = {
  guarantee: 'guarantee_update',
  attendance: 'attendance_update',
  vote: 'voting_update',
};

export type Row = {
  id: string;
  kind: string;
  action: string;
  election_id: number;
  committee_id: number;
  row_id: unknown;
  data: unknown;
  committed_at: Date;
};

/** The event a peer sends for a row (the hub's frame shape). */
export function eventOf(row: Row) {
  return {
    type: TYPES[row.kind] ?? row.kind,
    action: row.action,
    election_id: row.election_id,
    committee_id: row.committee_id,
    id: row.row_id,
    data: row.data,
    cursor: row.id,
    committed_at: row.committed_at,
  };
}

/** Starts at the newest outbox row; calls `onRow` for each new one. `stop` ends the listener. */
export async function pollOutbox(
  pool: pg.Pool,
  connectionString: string | undefined,
  onRow: (row: Row) => void,
): Promise<{ stop(): Promise<void> }> {
  let lastId = '0';
  let polling = false;
  let again = false;
  async function poll() {
    if (polling) {
      again = true;
      return;
    }
    polling = true;
    try {
      do {
        again = false;
        const { rows } = await pool.query<Row>(
          // ORDER BY the table's bigint column: a bare `id` would bind to the text alias and
          // sort a page as strings ("1000" < "999"), re-sending or skipping rows.
          `SELECT o.id::text AS id, o.kind, o.action, o.election_id::int AS election_id, o.committee_id::int AS committee_id,
                  o.row_id, o.data, o.committed_at
           FROM hub.outbox o WHERE o.id > $1::bigint ORDER BY o.id LIMIT 1000`,
          [lastId],
        );
        for (const row of rows) {
          lastId = row.id;
          onRow(row);
        }
        if (rows.length === 1000) again = true;
      } while (again);
    } catch (err) {
      console.error('poll failed', err);
    } finally {
      polling = false;
    }
  }

  const start = await pool.query<{ id: string }>('SELECT coalesce(max(id), 0)::text AS id FROM hub.outbox');
  lastId = start.rows[0]?.id ?? '0';
  const listener = new pg.Client({ connectionString });
  await listener.connect();
  listener.on('notification', () => void poll());
  await listener.query('LISTEN hub_outbox');
  // Captures NOTIFY only while a reader has declared itself asleep (sql/005_capture.sql). A
  // team's LISTEN-on-every-write design has no handshake: it keeps a standing declaration, so
  // every commit notifies it, as every one did before 005.
  const me = `bench-peer-${process.pid}`;
  const declare = () =>
    pool
      .query(`SELECT lapsed FROM hub.sleep($1, 600000)`, [me])
      .catch((err: unknown) => console.error('hub.sleep failed', err));
  await declare();
  const renew = setInterval(() => void declare(), 60_000);
  return {
    stop: async () => {
      clearInterval(renew);
      await pool.query(`SELECT hub.awake($1)`, [me]).catch(() => undefined);
      await listener.end();
    },
  };
}
