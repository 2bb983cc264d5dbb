// The dashboard app (issue 13). Built into the daemon's static directory, which serves it at /.
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";
import tailwindcss from "@tailwindcss/vite";

// The dev server forwards the daemon's routes to a running daemon (`npm run dev`).
const daemon = process.env.GATEWAYD_URL || "http://127.0.0.1:3000";

export default defineConfig({
  plugins: [react(), tailwindcss()],
  build: {
    outDir: "../gatewayd/static",
    emptyOutDir: true,
    assetsDir: "assets",
    target: "es2022",
    // No inline data: modules, so the strict Content-Security-Policy holds.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
  server: {
    port: 5173,
    strictPort: false,
    proxy: {
      "/api": { target: daemon, changeOrigin: true },
      "/ws": { target: daemon, ws: true, changeOrigin: true },
      "/_sim": { target: daemon, changeOrigin: true },
    },
  },
});
