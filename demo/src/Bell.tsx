import { useEffect, useRef, useState } from "react";
import { useChannel } from "@ssegate/react";
import {
  deleteNotification,
  getSession,
  markRead,
  notifyTest,
  type Notification,
  type Session,
} from "./api";
import { applyNotification, unreadCount } from "./notifications";

/**
 * The notification bell: the list loaded with the session, then kept up to date by the
 * `notification.created|read|deleted` events of `notifications:{user}`. Buttons only ask the
 * demo to publish; the list changes when the event comes back through the gateway — so every
 * tab of the user changes alike.
 */
export function Bell({ session }: { session: Session }) {
  const [items, setItems] = useState<Notification[]>(() => [...session.notifications].reverse());
  const [open, setOpen] = useState(false);
  const [busy, setBusy] = useState<string | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  useChannel(
    session.notifications_channel,
    (e) => setItems((list) => applyNotification(list, e.type, e.data)),
    {
      // The list above is the state as of `last_event_id`: the stream continues right after
      // it, no gap and no event applied twice ("0": the log was empty).
      since: session.last_event_id ?? "0",
      // Events were lost to retention: the state is loaded again.
      onGap: () => {
        getSession().then((s) => s && setItems([...s.notifications].reverse()));
      },
    },
  );
  const unread = unreadCount(items);

  const panel = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!open) return;
    const close = (e: MouseEvent) => {
      if (!panel.current?.contains(e.target as Node)) setOpen(false);
    };
    document.addEventListener("mousedown", close);
    return () => document.removeEventListener("mousedown", close);
  }, [open]);

  const run = (key: string, f: () => Promise<void>) => {
    setBusy(key);
    setProblem(null);
    f().catch((e: Error) => setProblem(e.message)).finally(() => setBusy(null));
  };

  return (
    <div className="bell" ref={panel}>
      <button
        className="bell-button"
        data-testid="bell"
        data-unread={unread}
        aria-label={`Notifications: ${unread} unread`}
        onClick={() => setOpen((o) => !o)}
      >
        <svg viewBox="0 0 24 24" width="20" height="20" aria-hidden="true">
          <path
            fill="currentColor"
            d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2z"
          />
        </svg>
        {unread > 0 && (
          <span className="badge" data-testid="bell-count">
            {unread}
          </span>
        )}
      </button>
      {open && (
        <div className="bell-panel" data-testid="bell-panel">
          <div className="bell-head">
            <strong>Notifications</strong>
            <button
              className="small"
              data-testid="notify-test"
              disabled={busy === "new"}
              onClick={() => run("new", notifyTest)}
            >
              Send a test notification
            </button>
          </div>
          {problem && <p className="problem">{problem}</p>}
          {items.length === 0 ? (
            <p className="muted empty">Nothing yet: pipeline runs notify you when they end.</p>
          ) : (
            <ul>
              {items.map((n) => (
                <li
                  key={n.id}
                  data-testid="notification"
                  data-id={n.id}
                  data-read={String(n.read)}
                  className={`notification level-${n.level} ${n.read ? "read" : "unread"}`}
                >
                  <div className="n-text">
                    <strong>{n.title}</strong>
                    <span>{n.body}</span>
                    <time dateTime={n.time}>{new Date(n.time).toLocaleTimeString()}</time>
                  </div>
                  <div className="n-actions">
                    {!n.read && (
                      <button
                        className="small"
                        data-testid="mark-read"
                        disabled={busy === n.id}
                        onClick={() => run(n.id, () => markRead(n.id))}
                      >
                        Mark read
                      </button>
                    )}
                    <button
                      className="small danger"
                      data-testid="delete"
                      disabled={busy === n.id}
                      onClick={() => run(n.id, () => deleteNotification(n.id))}
                    >
                      Delete
                    </button>
                  </div>
                </li>
              ))}
            </ul>
          )}
        </div>
      )}
    </div>
  );
}
