import { mkdirSync } from "node:fs";
import { artifacts, binary, chromiumPath } from "./harness";

/** Fails early, saying what to build, when a prerequisite is missing. */
export default function setup() {
  binary();
  // The demo app is checked where a demo starts (`Demo.launch`, same message): the Mercure
  // test runs `ssegate serve` and needs no demo.
  chromiumPath();
  mkdirSync(artifacts, { recursive: true });
}
