import { memo, useLayoutEffect, useMemo, useRef, useState } from "react";
import { useEvents, useSubscriptionStatus } from "@ssegate/react";
import type { RealtimeError, RealtimeEvent } from "@ssegate/client";
import type { LogLine, Session, Workflow } from "./api";
import { continuity } from "./continuity";

/** How many lines a viewer keeps. */
const KEEP_LINES = 2000;
/** How many earlier lines a workflow opened for the first time starts with. */
export const HISTORY_LINES = 500;

/**
 * The viewer of the selected workflow, and only that one: no hidden viewers. A workflow opened
 * for the first time starts with its last `HISTORY_LINES` lines (`useEvents`' `history`: the
 * gateway sends them, then the live ones). Its lines stay in the client's store when another
 * workflow is shown, so switching back shows them at once and continues after the last one
 * kept (the store subscribes again with `since`): none missing, none twice. A workflow the
 * user may not read is refused by the gateway (403).
 */
export function LogsPage({ session, selected }: { session: Session; selected?: Workflow }) {
  if (!selected) return null;
  return <LogViewer key={selected.channel} workflow={selected} user={session.name} />;
}

function LogViewer({ workflow, user }: { workflow: Workflow; user: string }) {
  const [gaps, setGaps] = useState(0);
  const events = useEvents<LogLine>(workflow.channel, {
    limit: KEEP_LINES,
    history: HISTORY_LINES,
    onGap: () => setGaps((n) => n + 1),
  });
  // Whether the gateway has the channel, and why not (kept by the client, so a viewer mounted
  // again still knows it was refused).
  const sub = useSubscriptionStatus(workflow.channel);
  const refused: RealtimeError | null = sub?.status === "refused" ? sub.error : null;
  const stats = useMemo(() => continuity(events.map((e) => e.data.seq)), [events]);
  const last = events[events.length - 1]?.data;

  // Follow the tail unless the reader scrolled up.
  const box = useRef<HTMLDivElement>(null);
  const follow = useRef(true);
  useLayoutEffect(() => {
    const el = box.current;
    if (el && follow.current) el.scrollTop = el.scrollHeight;
  }, [events]);

  return (
    <section className="feed" data-channel={workflow.channel} data-testid="feed" data-status={sub?.status ?? ""}>
      <div className="feed-head">
        <div>
          <h2>{workflow.name}</h2>
          <span className="muted">
            workspace <code>{workflow.workspace}</code> · channel <code>{workflow.channel}</code>
          </span>
        </div>
        {last && <RunStatus line={last} />}
      </div>
      {refused ? (
        <div className="refused" data-testid="refused">
          The gateway refused <code>{workflow.channel}</code> for {user}:{" "}
          <strong>
            {refused.status} {refused.code}
          </strong>
          . Their token does not grant this channel, so no line of it ever reaches this page.
        </div>
      ) : (
        <>
          <div
            className="feed-stats"
            data-testid="continuity"
            data-count={stats.count}
            data-first={stats.first ?? ""}
            data-last={stats.last ?? ""}
            data-missing={stats.missing}
            data-duplicates={stats.duplicates}
          >
            {stats.count === 0
              ? sub?.status === "subscribed"
                ? "waiting for the pipeline…"
                : "loading the latest lines…"
              : `${stats.count} lines, #${stats.first}–#${stats.last} · ${stats.missing} missing · ${stats.duplicates} duplicated`}
            {gaps > 0 && (
              <span className="gap-note">
                {" "}
                · {gaps} gap{gaps > 1 ? "s" : ""}: older lines were dropped by retention
              </span>
            )}
          </div>
          <div
            className="log"
            ref={box}
            data-testid="log"
            onScroll={(e) => {
              const el = e.currentTarget;
              follow.current = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
            }}
          >
            {events.map((e) => (
              <Row key={e.id} event={e} />
            ))}
          </div>
        </>
      )}
    </section>
  );
}

const Row = memo(function Row({ event }: { event: RealtimeEvent<LogLine> }) {
  const d = event.data;
  return (
    <div className={`line level-${d.level}`} data-seq={d.seq} data-id={event.id}>
      <span className="seq">#{d.seq}</span>
      <time dateTime={event.time}>{event.time.slice(11, 23)}</time>
      <span className={`stage stage-${d.stage}`}>{d.stage}</span>
      <span className="msg">{d.line}</span>
    </div>
  );
});

function RunStatus({ line }: { line: LogLine }) {
  const done = line.step === line.steps;
  const state = !done ? "running" : line.level === "error" ? "failed" : "succeeded";
  return (
    <div className={`run run-${state}`} data-testid="run-status">
      <strong>run #{line.run}</strong> · {state}
      {!done && (
        <>
          {" "}
          · {line.stage} · step {line.step}/{line.steps}
          <progress max={line.steps} value={line.step} />
        </>
      )}
    </div>
  );
}
