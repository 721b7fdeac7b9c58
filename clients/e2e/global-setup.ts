import { mkdirSync } from "node:fs";
import { artifacts, binary, chromiumPath, webDir } from "./harness";

/** Fails early, saying what to build, when a prerequisite is missing. */
export default function setup() {
  binary();
  webDir();
  chromiumPath();
  mkdirSync(artifacts, { recursive: true });
}
