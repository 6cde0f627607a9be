// A virtualized vertical list with measured row heights: only the rows in view (plus a margin)
// are in the DOM, so 10,000 messages scroll as smoothly as 50. The first visible row is the
// anchor: rows measured or prepended above it never move what the reader sees (no layout
// shift), and a list scrolled to the bottom stays there when rows arrive.
import type { ComponentChildren } from 'preact';
import { useLayoutEffect, useRef, useState } from 'preact/hooks';

interface Props<T> {
  items: T[];
  keyOf: (item: T) => string;
  render: (item: T, index: number) => ComponentChildren;
  /** Called when the reader nears the top (load older rows). */
  onNearTop?: () => void;
  estimate?: number;
  label: string;
}

const OVERSCAN = 600; // px rendered beyond each edge

export function VirtualList<T>({ items, keyOf, render, onNearTop, estimate = 64, label }: Props<T>) {
  const box = useRef<HTMLDivElement>(null);
  const heights = useRef(new Map<string, number>());
  const [, setTick] = useState(0);
  const [view, setView] = useState({ top: 0, height: 600 });
  // Where the reader was before this render: an anchor row and its offset from the top.
  const anchor = useRef<{ key: string; delta: number } | null>(null);
  const atBottom = useRef(true);
  const firstLayout = useRef(true);

  const keys = items.map(keyOf);
  const offsets = new Array<number>(items.length + 1);
  offsets[0] = 0;
  for (let i = 0; i < items.length; i++) offsets[i + 1] = offsets[i] + (heights.current.get(keys[i]) ?? estimate);
  const total = offsets[items.length];

  const indexAt = (y: number) => {
    let lo = 0;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (offsets[mid + 1] <= y) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  const start = Math.max(0, indexAt(view.top - OVERSCAN));
  const end = Math.min(items.length, indexAt(view.top + view.height + OVERSCAN) + 1);

  const remember = () => {
    const el = box.current;
    if (!el) return;
    atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 8;
    const i = indexAt(el.scrollTop);
    if (i < items.length) anchor.current = { key: keys[i], delta: el.scrollTop - offsets[i] };
  };

  // After every render: measure rendered rows, then restore the reader's position.
  useLayoutEffect(() => {
    const el = box.current;
    if (!el) return;
    let changed = false;
    for (const row of Array.from(el.querySelectorAll<HTMLElement>('[data-vkey]'))) {
      const k = row.dataset.vkey!;
      const h = row.offsetHeight;
      if (heights.current.get(k) !== h) {
        heights.current.set(k, h);
        changed = true;
      }
    }
    if (changed) {
      setTick((t) => t + 1); // re-render with the measured offsets; position restored then
      return;
    }
    if (firstLayout.current || atBottom.current) {
      firstLayout.current = false;
      el.scrollTop = el.scrollHeight;
    } else if (anchor.current) {
      const i = keys.indexOf(anchor.current.key);
      if (i >= 0) {
        const want = offsets[i] + anchor.current.delta;
        if (Math.abs(el.scrollTop - want) > 1) el.scrollTop = want;
      }
    }
    if (view.height !== el.clientHeight || Math.abs(view.top - el.scrollTop) > 1) {
      setView({ top: el.scrollTop, height: el.clientHeight });
    }
    remember();
  });

  const onScroll = () => {
    const el = box.current;
    if (!el) return;
    remember();
    setView({ top: el.scrollTop, height: el.clientHeight });
    if (el.scrollTop < 400 && onNearTop) onNearTop();
  };

  return (
    <div class="vlist" ref={box} onScroll={onScroll} role="log" aria-label={label} aria-live="polite" tabIndex={0}>
      <div class="vlist-inner" style={{ height: `${total}px` }}>
        {items.slice(start, end).map((item, j) => {
          const i = start + j;
          return (
            <div class="vrow" key={keys[i]} data-vkey={keys[i]} style={{ transform: `translateY(${offsets[i]}px)` }}>
              {render(item, i)}
            </div>
          );
        })}
      </div>
    </div>
  );
}
