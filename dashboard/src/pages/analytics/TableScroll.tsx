// A table's wrapper that scrolls sideways on narrow screens. `relative` makes it the containing
// block of absolutely placed children (sr-only headers), so they cannot widen the page; it is
// focusable so that keyboard users can scroll it.
import type { ReactNode } from "react";
import clsx from "clsx";
import { focusRing } from "../../components/ui";

export function TableScroll({ label, children }: { label: string; children: ReactNode }) {
  return (
    <div role="region" aria-label={label} tabIndex={0} className={clsx("relative -mx-4 overflow-x-auto rounded-sm px-4", focusRing)}>
      {children}
    </div>
  );
}
