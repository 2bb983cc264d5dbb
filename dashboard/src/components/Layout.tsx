// The frame of the logged-in pages: header with navigation, language switch, Logout.
import clsx from "clsx";
import { BarChart3, KeyRound, LayoutDashboard, LogOut, MessageCircle } from "lucide-react";
import { useId, type ReactNode } from "react";
import { Link, useLocation } from "wouter";
import { useAuth } from "../auth";
import { LANGS, useLang, useT, type Lang } from "../i18n";
import { focusRing } from "./ui";

export function LanguageSwitch({ className }: { className?: string }) {
  const t = useT();
  const { lang, setLang } = useLang();
  const id = useId();
  return (
    <div className={clsx("flex items-center gap-1.5", className)}>
      <label htmlFor={id} className="sr-only">
        {t("lang.label")}
      </label>
      <select
        id={id}
        value={lang}
        onChange={(e) => setLang(e.target.value as Lang)}
        className={clsx(
          "rounded-md border border-slate-300 bg-white py-1 pl-2 text-sm text-slate-800",
          focusRing,
        )}
      >
        {LANGS.map((l) => (
          <option key={l} value={l} lang={l}>
            {t(`lang.${l}`)}
          </option>
        ))}
      </select>
    </div>
  );
}

export function Brand({ href = "/" }: { href?: string }) {
  return (
    <Link href={href} className={clsx("flex items-center gap-2 rounded-md font-semibold text-slate-900", focusRing)}>
      <span aria-hidden="true" className="grid size-7 place-items-center rounded-md bg-emerald-600 text-white">
        <MessageCircle className="size-4" />
      </span>
      gatewayd
    </Link>
  );
}

function NavLink({ href, icon, children, match }: { href: string; icon: ReactNode; children: ReactNode; match: (p: string) => boolean }) {
  const [location] = useLocation();
  const active = match(location);
  return (
    <Link
      href={href}
      aria-current={active ? "page" : undefined}
      className={clsx(
        "inline-flex shrink-0 items-center gap-1.5 rounded-md px-3 py-1.5 text-sm font-medium",
        active ? "bg-emerald-50 text-emerald-800" : "text-slate-700 hover:bg-slate-100",
        focusRing,
      )}
    >
      {icon}
      {children}
    </Link>
  );
}

/** The skip link, header and main area of a page. */
export function Layout({ children }: { children: ReactNode }) {
  const t = useT();
  const { logout } = useAuth();
  const [, navigate] = useLocation();
  const onLogout = async () => {
    await logout();
    navigate("/login", { replace: true });
  };
  return (
    <div className="min-h-screen">
      <a
        href="#main"
        className="sr-only rounded-md bg-white px-3 py-2 text-sm font-medium focus:not-sr-only focus:absolute focus:left-2 focus:top-2 focus:z-50 focus:outline-2 focus:outline-emerald-600"
      >
        {t("nav.skip")}
      </a>
      <header className="border-b border-slate-200 bg-white">
        <div className="mx-auto flex max-w-6xl flex-wrap items-center gap-x-3 gap-y-2 px-4 py-2">
          <Brand href="/dashboard" />
          <nav aria-label={t("nav.label")} className="order-3 -mx-1 flex w-full gap-1 overflow-x-auto px-1 pb-1 sm:order-none sm:w-auto sm:pb-0">
            <NavLink href="/dashboard" match={(p) => p === "/dashboard" || p.startsWith("/session/")} icon={<LayoutDashboard aria-hidden="true" className="size-4" />}>
              {t("nav.dashboard")}
            </NavLink>
            <NavLink href="/keys" match={(p) => p === "/keys"} icon={<KeyRound aria-hidden="true" className="size-4" />}>
              {t("nav.keys")}
            </NavLink>
            <NavLink href="/analytics" match={(p) => p === "/analytics" || p.startsWith("/analytics/")} icon={<BarChart3 aria-hidden="true" className="size-4" />}>
              {t("nav.analytics")}
            </NavLink>
          </nav>
          <div className="ml-auto flex items-center gap-2">
            <LanguageSwitch />
            <button
              type="button"
              onClick={onLogout}
              className={clsx(
                "inline-flex items-center gap-1.5 rounded-md px-2.5 py-1.5 text-sm font-medium text-slate-700 hover:bg-slate-100",
                focusRing,
              )}
            >
              <LogOut aria-hidden="true" className="size-4" />
              {t("nav.logout")}
            </button>
          </div>
        </div>
      </header>
      <main id="main" tabIndex={-1} className="mx-auto max-w-6xl px-4 py-6 outline-none">
        {children}
      </main>
    </div>
  );
}

/** The frame of the public pages (generate PIN, login, not found): brand and language only. */
export function PublicLayout({ children }: { children: ReactNode }) {
  return (
    <div className="flex min-h-screen flex-col">
      <header className="border-b border-slate-200 bg-white">
        <div className="mx-auto flex max-w-6xl items-center justify-between gap-4 px-4 py-2">
          <Brand />
          <LanguageSwitch />
        </div>
      </header>
      <main id="main" className="flex flex-1 items-start justify-center px-4 py-10 sm:items-center">
        {children}
      </main>
    </div>
  );
}

/** A page heading with optional actions at its right (wrapping under it on phones). */
export function PageHeader({ title, children, description }: { title: ReactNode; children?: ReactNode; description?: ReactNode }) {
  return (
    <div className="mb-6 flex flex-wrap items-end justify-between gap-3">
      <div className="min-w-0">
        <h1 className="text-2xl font-semibold text-slate-900">{title}</h1>
        {description && <p className="mt-1 text-sm text-slate-600">{description}</p>}
      </div>
      {children && <div className="flex flex-wrap gap-2">{children}</div>}
    </div>
  );
}
