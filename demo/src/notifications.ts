import type { Notification } from "./api";

/**
 * Applies a `notification.*` event to the list (newest first). Idempotent, so that replaying
 * events the loaded state already reflects (the page resumes a little before it) converges to
 * the same list: `created` replaces a notification of the same id, `read` and `deleted` of a
 * notification that is not there change nothing.
 */
export function applyNotification(
  list: Notification[],
  type: string,
  data: unknown,
): Notification[] {
  const d = data as Partial<Notification> | null;
  if (!d || typeof d.id !== "string") return list;
  switch (type) {
    case "notification.created": {
      const n = d as Notification;
      return list.some((x) => x.id === n.id)
        ? list.map((x) => (x.id === n.id ? n : x))
        : [n, ...list];
    }
    case "notification.read":
      return list.some((x) => x.id === d.id && !x.read)
        ? list.map((x) => (x.id === d.id ? { ...x, read: true } : x))
        : list;
    case "notification.deleted":
      return list.some((x) => x.id === d.id) ? list.filter((x) => x.id !== d.id) : list;
    default:
      return list;
  }
}

export const unreadCount = (list: Notification[]) => list.filter((n) => !n.read).length;
