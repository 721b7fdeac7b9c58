import { useEffect, useRef, useState, type ReactNode } from "react";
import { admin, adminToken } from "./api";

interface Status {
  node_id: string;
  version: string;
  uptime_s: number;
  connections: number;
  channels: number;
  log: { kind: string; head: string; oldest: string | null };
  hub: {
    connections_opened: number;
    events_dispatched: number;
    frames_queued: number;
    queue_overflows: number;
    gaps: number;
  };
}
interface Connection {
  connection_id: string;
  user: string;
  channels: string[];
  ip: string | null;
  opened: string;
  session_id: string | null;
}
interface Channel {
  channel: string;
  subscribers: number;
}
interface Sample {
  at: number;
  events: number;
  frames: number;
}

const POLL_MS = 1000;
const HISTORY = 60;

/**
 * The gateway seen by an operator: `/v1/status`, `/v1/connections` and `/v1/channels`, polled
 * each second with an admin token. Events/s is the growth of the hub's `events_dispatched`
 * (events read from the log), deliveries/s that of `frames_queued` (events × recipients).
 */
export function AdminPage() {
  const [status, setStatus] = useState<Status | null>(null);
  const [connections, setConnections] = useState<Connection[]>([]);
  const [channels, setChannels] = useState<Channel[]>([]);
  const [rates, setRates] = useState<{ events: number; frames: number }[]>([]);
  const [problem, setProblem] = useState<string | null>(null);
  const token = useRef<string | null>(null);
  const last = useRef<Sample | null>(null);

  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout>;
    const poll = async () => {
      try {
        token.current ??= await adminToken();
        const t = token.current;
        const [s, c, ch] = await Promise.all([
          admin<Status>(t, "/v1/status"),
          admin<{ connections: Connection[] }>(t, "/v1/connections"),
          admin<{ channels: Channel[] }>(t, "/v1/channels"),
        ]);
        if (stopped) return;
        const now: Sample = {
          at: performance.now(),
          events: s.hub.events_dispatched,
          frames: s.hub.frames_queued,
        };
        const prev = last.current;
        // A restarted gateway starts its counters again: no rate across that.
        if (prev && now.events >= prev.events && now.frames >= prev.frames) {
          const dt = (now.at - prev.at) / 1000;
          const r = { events: (now.events - prev.events) / dt, frames: (now.frames - prev.frames) / dt };
          setRates((old) => [...old.slice(-(HISTORY - 1)), r]);
        }
        last.current = now;
        setStatus(s);
        setConnections(c.connections);
        setChannels(ch.channels.sort((a, b) => a.channel.localeCompare(b.channel)));
        setProblem(null);
      } catch (e) {
        token.current = null; // expired, or the gateway restarted with another key
        if (!stopped) setProblem((e as Error).message);
      }
      if (!stopped) timer = setTimeout(poll, POLL_MS);
    };
    poll();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, []);

  const kick = async (user: string) => {
    if (token.current) await admin(token.current, `/v1/users/${encodeURIComponent(user)}/connections`, "DELETE");
  };
  const rate = rates[rates.length - 1];
  const users = new Set(connections.map((c) => c.user));

  return (
    <section className="admin" data-testid="admin">
      <div className="feed-head">
        <div>
          <h2>Gateway</h2>
          <span className="muted">
            {status
              ? `${status.node_id} · version ${status.version} · up ${status.uptime_s} s · ${status.log.kind} log`
              : "…"}
          </span>
        </div>
        {problem && <span className="problem">{problem}</span>}
      </div>
      <div className="cards">
        <Card label="Connections" value={status?.connections} testid="admin-connections" />
        <Card label="Users connected" value={users.size} />
        <Card label="Channels" value={status?.channels} testid="admin-channels" />
        <Card label="Events/s" value={rate ? rate.events.toFixed(1) : "…"} testid="admin-events-rate">
          <Sparkline values={rates.map((r) => r.events)} />
        </Card>
        <Card label="Deliveries/s" value={rate ? rate.frames.toFixed(1) : "…"}>
          <Sparkline values={rates.map((r) => r.frames)} />
        </Card>
        <Card
          label="Log"
          value={status ? `#${status.log.head}` : "…"}
          note={status?.log.oldest ? `oldest kept #${status.log.oldest}` : undefined}
        />
        <Card label="Gaps sent" value={status?.hub.gaps} />
        <Card label="Queue overflows" value={status?.hub.queue_overflows} />
      </div>
      <h3>Connections</h3>
      <table data-testid="admin-connection-table">
        <thead>
          <tr>
            <th>User</th>
            <th>Connection</th>
            <th>Channels</th>
            <th>Address</th>
            <th>Opened</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {connections.map((c) => (
            <tr key={c.connection_id} data-user={c.user}>
              <td>{c.user}</td>
              <td>
                <code>{c.connection_id}</code>
              </td>
              <td>
                {c.channels.map((ch) => (
                  <code key={ch} className="chip">
                    {ch}
                  </code>
                ))}
              </td>
              <td>{c.ip}</td>
              <td>{new Date(c.opened).toLocaleTimeString()}</td>
              <td>
                <button className="small danger" onClick={() => kick(c.user)}>
                  Close {c.user}'s streams
                </button>
              </td>
            </tr>
          ))}
          {connections.length === 0 && (
            <tr>
              <td colSpan={6} className="muted">
                No open stream.
              </td>
            </tr>
          )}
        </tbody>
      </table>
      <h3>Channels</h3>
      <table>
        <thead>
          <tr>
            <th>Channel</th>
            <th>Subscribers</th>
          </tr>
        </thead>
        <tbody>
          {channels.map((c) => (
            <tr key={c.channel}>
              <td>
                <code>{c.channel}</code>
              </td>
              <td>{c.subscribers}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function Card(props: {
  label: string;
  value: number | string | undefined;
  note?: string;
  testid?: string;
  children?: ReactNode;
}) {
  return (
    <div className="card">
      <span className="card-label">{props.label}</span>
      <span className="card-value" data-testid={props.testid}>
        {props.value ?? "…"}
      </span>
      {props.note && <span className="muted">{props.note}</span>}
      {props.children}
    </div>
  );
}

function Sparkline({ values }: { values: number[] }) {
  if (values.length < 2) return <svg className="spark" />;
  const max = Math.max(1, ...values);
  const w = 120;
  const h = 28;
  const points = values
    .map((v, i) => `${((i / (values.length - 1)) * w).toFixed(1)},${(h - (v / max) * (h - 2) - 1).toFixed(1)}`)
    .join(" ");
  return (
    <svg className="spark" viewBox={`0 0 ${w} ${h}`} preserveAspectRatio="none">
      <polyline points={points} fill="none" stroke="currentColor" strokeWidth="1.5" />
    </svg>
  );
}
