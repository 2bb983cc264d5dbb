// Any path the app does not know.
import clsx from "clsx";
import { Home } from "lucide-react";
import { Link } from "wouter";
import { useAuth } from "../auth";
import { PublicLayout } from "../components/Layout";
import { focusRing, usePageTitle } from "../components/ui";
import { useT } from "../i18n";

export default function NotFound() {
  const t = useT();
  const { token } = useAuth();
  usePageTitle(t("notFound.title"));
  return (
    <PublicLayout>
      <div data-testid="not-found" className="w-full max-w-md rounded-xl border border-slate-200 bg-white p-6 text-center shadow-sm">
        <p className="font-mono text-5xl font-bold text-slate-300">404</p>
        <h1 className="mt-2 text-2xl font-semibold text-slate-900">{t("notFound.title")}</h1>
        <p className="mt-2 text-sm text-slate-600">{t("notFound.text")}</p>
        <Link
          href={token ? "/dashboard" : "/"}
          className={clsx(
            "mt-6 inline-flex items-center gap-1.5 rounded-md bg-emerald-600 px-4 py-2 text-sm font-medium text-white hover:bg-emerald-700",
            focusRing,
          )}
        >
          <Home aria-hidden="true" className="size-4" />
          {t("notFound.home")}
        </Link>
      </div>
    </PublicLayout>
  );
}
