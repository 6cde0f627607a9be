import { defineConfig } from 'vite';

// The node embeds dist/ into its binary (crates/node/build.rs); `npm run build` must give the
// same bytes from the same sources, so no timestamps and no absolute paths go into the output.
export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
  },
});
