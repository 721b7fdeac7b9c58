import { useEffect, useState } from "react";
import { RealtimeProvider } from "@ssegate/react";
import { getSession, getUsers, type DemoUser, type Session } from "./api";
import { useRoute } from "./hash";
import { sharingOptions } from "./sharing";
import { ConnectionBadge } from "./ConnectionBadge";
import { Bell } from "./Bell";
import { LogsPage } from "./LogViewer";
import { AdminPage } from "./Admin";

export function App() {
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    getSession().then(setSession, (e: Error) => setError(e.message));
  }, []);
  if (error) return <p className="page-message">Cannot reach the demo: {error}</p>;
  if (session === undefined) return <p className="page-message">Loading…</p>;
  if (session === null) return <Login />;
  return (
    // One client per page, shared by every tab of this user (one stream for all of them).
    // Each channel says where it starts: a workflow's log with its last lines (`history`),
    // the notifications right after the state loaded with the session (`since`).
    <RealtimeProvider
      key={session.id}
      options={{
        url: location.origin,
        shareKey: `${location.origin}|${session.id}`,
        // `?sharing=sharedworker`: the stream runs in a SharedWorker instead of a leader tab.
        ...sharingOptions(location.search),
      }}
    >
      <Shell session={session} />
    </RealtimeProvider>
  );
}

function Login() {
  const [users, setUsers] = useState<DemoUser[]>([]);
  useEffect(() => {
    getUsers().then(setUsers, () => setUsers([]));
  }, []);
  const next = encodeURIComponent("/" + location.search + location.hash);
  return (
    <div className="login">
      <h1>
        <span className="brand-dot" /> ssegate demo
      </h1>
      <p>
        A simulated ETL job writes pipeline logs and notifications into the gateway. Sign in as
        one of two users: the token in the <code>ssegate_token</code> cookie says which channels
        each may subscribe to, and the gateway enforces it.
      </p>
      <div className="login-cards">
        {users.map((u) => (
          <a
            key={u.id}
            className="login-card"
            data-testid={`login-${u.id}`}
            href={`/demo/login?user=${encodeURIComponent(u.id)}&next=${next}`}
          >
            <strong>
              Sign in as {u.name} <span className="muted">({u.id})</span>
            </strong>
            <span className="muted">may subscribe to</span>
            <ul>
              {u.channels.map((c) => (
                <li key={c}>
                  <code>{c}</code>
                </li>
              ))}
            </ul>
          </a>
        ))}
      </div>
      <p className="muted">
        Also: <a href="/demo/login?user=a&amp;next=/native.html%3Fchannel%3Dlogs:w1:f1">a page
        with nothing but a native EventSource</a> (signs you in as Alice).
      </p>
    </div>
  );
}

function Shell({ session }: { session: Session }) {
  const route = useRoute();
  const page = route[0] === "admin" ? "admin" : "logs";
  const allowed = session.workflows.filter((w) => w.allowed);
  const selected =
    session.workflows.find(
      (w) => page === "logs" && w.workspace === route[1] && w.workflow === route[2],
    ) ?? allowed[0];
  return (
    <div className="app">
      <header className="topbar">
        <a className="brand" href="#/">
          <span className="brand-dot" /> ssegate demo
        </a>
        <nav>
          {session.workflows.map((w) => (
            <a
              key={w.channel}
              href={`#/logs/${w.workspace}/${w.workflow}`}
              className={page === "logs" && w === selected ? "active" : ""}
              title={w.allowed ? w.channel : `${w.channel}: not granted to ${session.name}`}
            >
              {!w.allowed && <Lock />}
              {w.name}
            </a>
          ))}
          <a href="#/admin" className={page === "admin" ? "active" : ""}>
            Admin
          </a>
        </nav>
        <div className="topbar-right">
          <ConnectionBadge />
          <Bell session={session} />
          <span className="user" data-testid="user">
            {session.name}
          </span>
          <a className="signout" href="/demo/logout">
            Sign out
          </a>
        </div>
      </header>
      <main>
        {/* Only the page shown is mounted; the lines of the workflows seen stay in the
            client's store (useEvents), so coming back shows them and continues. */}
        {page === "logs" ? <LogsPage session={session} selected={selected} /> : <AdminPage />}
      </main>
    </div>
  );
}

function Lock() {
  return (
    <svg className="lock" viewBox="0 0 16 16" width="12" height="12" aria-label="not granted">
      <path
        fill="currentColor"
        d="M4 7V5a4 4 0 0 1 8 0v2h1v8H3V7h1zm2 0h4V5a2 2 0 0 0-4 0v2z"
      />
    </svg>
  );
}
