import { useEffect, useState } from "react";
import { useConnectionState, useRealtime } from "@ssegate/react";
import type { ConnectionState } from "@ssegate/client";

function describe(s: ConnectionState): string {
  switch (s.status) {
    case "idle":
      return "Idle";
    case "connecting":
      return "Connecting…";
    case "connected":
      return s.transport === "poll" ? "Live (long-polling)" : "Live";
    case "reconnecting":
      return `Reconnecting in ${(s.delayMs / 1000).toFixed(1)} s (${s.reason}, attempt ${s.attempt})`;
    case "offline":
      return s.reason === "hidden" ? "Paused (tab hidden)" : "Offline";
    case "unauthorized":
      return `Signed out (${s.reason})`;
    case "closed":
      return `Closed (${s.reason})`;
  }
}

/** The connection state (`useConnectionState`), and whether this tab holds the stream. */
export function ConnectionBadge() {
  const state = useConnectionState();
  const rt = useRealtime();
  // Leadership moves between tabs without a state change in this one: look again each second.
  const [, setTick] = useState(0);
  useEffect(() => {
    const t = setInterval(() => setTick((n) => n + 1), 1000);
    return () => clearInterval(t);
  }, []);
  const stuck = state.status === "unauthorized" || state.status === "closed";
  return (
    <div
      className={`conn conn-${state.status}`}
      data-testid="connection"
      data-status={state.status}
      data-leader={String(rt.isLeader)}
      data-sharing={rt.sharing}
      title={
        rt.sharing === "sharedworker"
          ? "A SharedWorker holds the stream for every tab of this user"
          : rt.isLeader
            ? "This tab holds the stream; other tabs of this user share it"
            : "Events arrive through the tab that holds the stream"
      }
    >
      <span className="conn-dot" />
      {describe(state)}
      <span className="conn-role">
        {rt.sharing === "sharedworker" ? "· shared worker" : rt.isLeader ? "· this tab streams" : "· shared"}
      </span>
      {stuck && (
        <button className="link" onClick={() => rt.reconnect()}>
          Reconnect
        </button>
      )}
    </div>
  );
}
