import { createElement } from "react";
import { renderToString } from "react-dom/server";
import { describe, expect, it } from "vitest";
import { RealtimeProvider } from "@ssegate/react";
import { LogsPage } from "../src/LogViewer";
import type { Session, Workflow } from "../src/api";

const wf = (workflow: string, allowed = true): Workflow => ({
  workspace: "w1",
  workflow,
  name: workflow.toUpperCase(),
  channel: `logs:w1:${workflow}`,
  allowed,
});
const session: Session = {
  id: "a",
  name: "Alice",
  channels: [],
  workflows: [wf("f1"), wf("f2"), wf("f3", false)],
  notifications_channel: "notifications:a",
  notifications: [],
  last_event_id: null,
  history_from: null,
};

// Server rendering: the React bindings return their server snapshots (no network).
const render = (selected?: Workflow) =>
  renderToString(
    createElement(RealtimeProvider, {
      options: { url: "http://127.0.0.1:1" },
      children: createElement(LogsPage, { session, selected }),
    }),
  );

describe("LogsPage", () => {
  it("mounts the selected workflow's viewer only (no hidden viewers)", () => {
    const html = render(session.workflows[1]);
    expect(html.match(/data-channel="[^"]*"/g)).toEqual(['data-channel="logs:w1:f2"']);
    expect(html).not.toContain("hidden");
    expect(html).toContain("loading the latest lines");
  });

  it("mounts nothing without a selected workflow", () => {
    expect(render(undefined)).toBe("");
  });
});
