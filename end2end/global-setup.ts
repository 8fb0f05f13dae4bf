import { existsSync } from "node:fs";
import { serverBinary, siteRoot } from "./tests/fixtures";

// Fail fast, with a hint, when the site has not been built.
export default async function globalSetup() {
  const missing = [serverBinary(), `${siteRoot()}/pkg/prefetch-demo.wasm`].filter((p) => !existsSync(p));
  if (missing.length > 0) {
    throw new Error(`missing ${missing.join(", ")}: run \`cargo leptos build\` first (scripts/test.sh does)`);
  }
}
