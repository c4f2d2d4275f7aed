import { defineConfig } from "vite";

// `npm run build` writes dist/, which `nearby run --dev` serves as the map page.
export default defineConfig({
  build: { outDir: "dist", emptyOutDir: true, sourcemap: true },
});
