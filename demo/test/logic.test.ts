import { describe, expect, it } from "vitest";
import { applyNotification, unreadCount } from "../src/notifications";
import { continuity } from "../src/continuity";
import type { Notification } from "../src/api";

const n = (id: string, read = false): Notification => ({
  id,
  title: `t${id}`,
  body: "",
  level: "info",
  time: "2026-11-25T10:00:00.000Z",
  read,
});

describe("applyNotification", () => {
  it("adds newest first, marks read, deletes", () => {
    let list: Notification[] = [];
    list = applyNotification(list, "notification.created", n("n1"));
    list = applyNotification(list, "notification.created", n("n2"));
    expect(list.map((x) => x.id)).toEqual(["n2", "n1"]);
    expect(unreadCount(list)).toBe(2);
    list = applyNotification(list, "notification.read", { id: "n1" });
    expect(unreadCount(list)).toBe(1);
    list = applyNotification(list, "notification.deleted", { id: "n2" });
    expect(list).toEqual([n("n1", true)]);
  });

  it("replaying events the loaded state already reflects changes nothing in the end", () => {
    // Loaded state: n1 read, n2 deleted, n3 unread. The page resumes before all of it.
    const loaded = [n("n3"), n("n1", true)];
    const replay: [string, unknown][] = [
      ["notification.created", n("n1")],
      ["notification.created", n("n2")],
      ["notification.read", { id: "n1" }],
      ["notification.deleted", { id: "n2" }],
      ["notification.created", n("n3")],
    ];
    const after = replay.reduce((l, [t, d]) => applyNotification(l, t, d), loaded);
    expect(after).toEqual(loaded);
  });

  it("ignores other types and malformed data", () => {
    const list = [n("n1")];
    expect(applyNotification(list, "log.created", { id: "n1" })).toBe(list);
    expect(applyNotification(list, "notification.read", null)).toBe(list);
    expect(applyNotification(list, "notification.read", { id: "nope" })).toBe(list);
  });
});

describe("continuity", () => {
  it("counts missing and repeated numbers", () => {
    expect(continuity([])).toMatchObject({ count: 0, missing: 0, duplicates: 0, first: null });
    expect(continuity([4, 5, 6])).toMatchObject({ first: 4, last: 6, missing: 0, duplicates: 0 });
    expect(continuity([4, 6, 9])).toMatchObject({ missing: 3, duplicates: 0 });
    expect(continuity([4, 5, 5, 6, 3])).toMatchObject({ missing: 0, duplicates: 2 });
  });
});

describe("sharingOptions", () => {
  it("reads ?sharing= and keeps the client's default without it", async () => {
    const { sharingOptions } = await import("../src/sharing");
    expect(sharingOptions("")).toEqual({});
    expect(sharingOptions("?sharing=bogus")).toEqual({});
    expect(sharingOptions("?sharing=leader")).toEqual({ sharing: "leader" });
    expect(sharingOptions("?x=1&sharing=none")).toEqual({ sharing: "none" });
    const worker = sharingOptions("?sharing=sharedworker");
    expect(worker.sharing).toBe("sharedworker");
    expect(typeof worker.sharedWorker).toBe("function");
  });
});
