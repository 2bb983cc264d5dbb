// Client routes (wouter). The server owns /api, /ws, /sessions, /agents, /health, /metrics,
// /docs, /openapi.json, /media and /_sim: none of them is a client route.
import { Component, lazy, Suspense, type ReactNode } from "react";
import { Redirect, Route, Switch } from "wouter";
import { AuthProvider, nextPath, RequireAuth, useAuth } from "./auth";
import { Layout } from "./components/Layout";
import { Button, ErrorNote, Spinner } from "./components/ui";
import { I18nProvider, useT } from "./i18n";
import Dashboard from "./pages/Dashboard";
import GeneratePin from "./pages/GeneratePin";
import Login from "./pages/Login";
import NotFound from "./pages/NotFound";

// Split off so that the dashboard page loads fast (Recharts lives in Analytics only).
const Analytics = lazy(() => import("./pages/Analytics"));
const SessionPage = lazy(() => import("./pages/SessionPage"));
const Keys = lazy(() => import("./pages/Keys"));

function PageLoading() {
  return (
    <div className="flex justify-center py-16">
      <Spinner />
    </div>
  );
}

function LoadFailed({ error }: { error: unknown }) {
  const t = useT();
  return (
    <div className="space-y-3">
      <ErrorNote error={error} />
      <Button onClick={() => location.reload()}>{t("common.reload")}</Button>
    </div>
  );
}

/** Shows an error instead of a blank page when a page fails (e.g. its code could not load). */
class PageBoundary extends Component<{ children: ReactNode }, { error: unknown }> {
  state = { error: null as unknown };
  static getDerivedStateFromError(error: unknown) {
    return { error };
  }
  render() {
    return this.state.error ? <LoadFailed error={this.state.error} /> : this.props.children;
  }
}

function Protected({ children }: { children: ReactNode }) {
  return (
    <RequireAuth>
      <Layout>
        <PageBoundary>
          <Suspense fallback={<PageLoading />}>{children}</Suspense>
        </PageBoundary>
      </Layout>
    </RequireAuth>
  );
}

function LoginRoute() {
  const { token } = useAuth();
  return token ? <Redirect to={nextPath()} replace /> : <Login />;
}

export default function App() {
  return (
    <I18nProvider>
      <AuthProvider>
        <Switch>
          <Route path="/">
            <GeneratePin />
          </Route>
          <Route path="/login">
            <LoginRoute />
          </Route>
          <Route path="/dashboard">
            <Protected>
              <Dashboard />
            </Protected>
          </Route>
          <Route path="/session/:id">
            <Protected>
              <SessionPage />
            </Protected>
          </Route>
          <Route path="/analytics">
            <Protected>
              <Analytics />
            </Protected>
          </Route>
          <Route path="/analytics/:sessionId">
            <Protected>
              <Analytics />
            </Protected>
          </Route>
          <Route path="/keys">
            <Protected>
              <Keys />
            </Protected>
          </Route>
          <Route>
            <NotFound />
          </Route>
        </Switch>
      </AuthProvider>
    </I18nProvider>
  );
}
