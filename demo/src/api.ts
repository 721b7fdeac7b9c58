/** The demo's own endpoints (`/demo/*`, served by `ssegate demo`) and the admin API. */

export interface Workflow {
  workspace: string;
  workflow: string;
  name: string;
  channel: string;
  /** Whether the signed-in user's token grants this channel (the gateway decides). */
  allowed: boolean;
}

export interface Notification {
  id: string;
  title: string;
  body: string;
  level: "info" | "success" | "error" | string;
  time: string;
  read: boolean;
}

export interface DemoUser {
  id: string;
  name: string;
  channels: string[];
}

export interface Session extends DemoUser {
  workflows: Workflow[];
  notifications_channel: string;
  /** Oldest first, as of `last_event_id`. */
  notifications: Notification[];
  last_event_id: string | null;
  /**
   * Where a stream would start to replay the latest lines of the user's workflows (unused by
   * the app since the log viewer asks for its lines with `history`).
   */
  history_from: string | null;
}

/** One line of a pipeline run, as the simulated ETL job publishes it. */
export interface LogLine {
  seq: number;
  run: number;
  step: number;
  steps: number;
  stage: string;
  level: "info" | "warn" | "error";
  line: string;
}

async function json<T>(res: Response): Promise<T> {
  if (!res.ok) {
    const body = await res.json().catch(() => null);
    throw new Error(body?.error?.message ?? `${res.status} ${res.statusText}`);
  }
  return (await res.json()) as T;
}

/** The signed-in user, or null when nobody is. */
export async function getSession(): Promise<Session | null> {
  const res = await fetch("/demo/session");
  if (res.status === 401) return null;
  return json<Session>(res);
}

export async function getUsers(): Promise<DemoUser[]> {
  return (await json<{ users: DemoUser[] }>(await fetch("/demo/users"))).users;
}

async function action(method: string, path: string): Promise<void> {
  const res = await fetch(path, { method });
  if (!res.ok) await json(res);
}

export const notifyTest = () => action("POST", "/demo/notifications");
export const markRead = (id: string) =>
  action("POST", `/demo/notifications/${encodeURIComponent(id)}/read`);
export const deleteNotification = (id: string) =>
  action("DELETE", `/demo/notifications/${encodeURIComponent(id)}`);

/** An admin token (demo only: `ssegate demo` hands one to anyone). */
export async function adminToken(): Promise<string> {
  return (await json<{ token: string }>(await fetch("/demo/admin-token"))).token;
}

export async function admin<T>(token: string, path: string, method = "GET"): Promise<T> {
  return json<T>(await fetch(path, { method, headers: { Authorization: `Bearer ${token}` } }));
}
