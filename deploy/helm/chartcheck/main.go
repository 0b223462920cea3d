// Command chartcheck is `helm lint` and `helm template` for the chart's tests, built from Helm's own
// library packages (helm.sh/helm/v4: the chart loader, values, the template engine, the linter and the
// manifest sorter) rather than the whole helm CLI. The CLI also brings kubectl, cli-runtime and the OCI
// registry clients, which take 4-9 minutes to build on two cores; these packages build in a fraction of
// that, so `make test` can build them on a fresh machine (deploy/helm/install-tools.sh).
//
// It takes the subset of helm's arguments the tests use and prints what helm prints for them:
//
//	chartcheck template NAME CHART [-f VALUES]... [--set KEY=VALUE]...
//	chartcheck lint [--strict] CHART [-f VALUES]... [--set KEY=VALUE]...
//
// Rendering follows `helm template` (helm's action.Install, client only): the chart's kubeVersion is
// checked against helm's default capabilities, values are validated against values.schema.json, the
// rendered files are sorted in helm's install order and NOTES.txt is left out.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	commonutil "helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"helm.sh/helm/v4/pkg/strvals"
)

// namespace is helm's default when no kube context names one, as on a machine without a cluster.
const namespace = "default"

type options struct {
	positional []string
	valueFiles []string
	sets       []string
	strict     bool
}

func main() {
	// Helm's library warns through slog; helm's CLI prints it as text without a time, and so do we.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})))
	if len(os.Args) < 2 {
		fail(errors.New("usage: chartcheck template NAME CHART | lint [--strict] CHART [-f FILE] [--set K=V]"))
	}
	opts, err := parse(os.Args[2:])
	if err != nil {
		fail(err)
	}
	switch os.Args[1] {
	case "template":
		err = template(opts)
	case "lint":
		err = lintChart(opts)
	default:
		err = fmt.Errorf("unknown command %q: template or lint", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

// fail prints an error as helm does, on stderr with "Error: ", and exits 1.
func fail(err error) {
	fmt.Fprintf(os.Stderr, "Error: %s\n", err)
	os.Exit(1)
}

func parse(args []string) (options, error) {
	var opts options
	for i := 0; i < len(args); i++ {
		arg := args[i]
		value := func() (string, error) {
			if name, v, ok := strings.Cut(arg, "="); ok && strings.HasPrefix(name, "--") {
				return v, nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("flag needs an argument: %s", arg)
			}
			i++
			return args[i], nil
		}
		switch name, _, _ := strings.Cut(arg, "="); name {
		case "-f", "--values":
			v, err := value()
			if err != nil {
				return opts, err
			}
			opts.valueFiles = append(opts.valueFiles, v)
		case "--set":
			v, err := value()
			if err != nil {
				return opts, err
			}
			opts.sets = append(opts.sets, v)
		case "--strict":
			opts.strict = true
		default:
			if strings.HasPrefix(arg, "-") {
				return opts, fmt.Errorf("unknown flag: %s", arg)
			}
			opts.positional = append(opts.positional, arg)
		}
	}
	return opts, nil
}

// values merges the -f files in order, then the --set values, as helm's values.Options.MergeValues.
func (o options) values() (map[string]any, error) {
	base := map[string]any{}
	for _, file := range o.valueFiles {
		raw, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		current, err := loader.LoadValues(strings.NewReader(string(raw)))
		if err != nil {
			return nil, fmt.Errorf("failed to parse %s: %w", file, err)
		}
		base = loader.MergeMaps(base, current)
	}
	for _, set := range o.sets {
		if err := strvals.ParseInto(set, base); err != nil {
			return nil, fmt.Errorf("failed parsing --set data: %w", err)
		}
	}
	return base, nil
}

func template(o options) error {
	if len(o.positional) != 2 {
		return errors.New("template needs NAME and CHART")
	}
	name, chartPath := o.positional[0], o.positional[1]
	vals, err := o.values()
	if err != nil {
		return err
	}
	ch, err := loader.Load(chartPath)
	if err != nil {
		return err
	}
	if err := chartutil.ProcessDependencies(ch, vals); err != nil {
		return fmt.Errorf("chart dependencies processing failed: %w", err)
	}
	caps := common.DefaultCapabilities.Copy()
	release := common.ReleaseOptions{Name: name, Namespace: namespace, Revision: 1, IsInstall: true}
	toRender, err := commonutil.ToRenderValuesWithSchemaValidation(ch, vals, release, caps, false)
	if err != nil {
		return err
	}
	out, err := render(ch, toRender, caps)
	if err != nil {
		// helm has a release to show by then, and says so.
		return fmt.Errorf("%w\n\nUse --debug flag to render out invalid YAML", err)
	}
	fmt.Print(out)
	return nil
}

// render is helm's action.Configuration.renderResources for `helm template` (no post-renderer, no
// CRDs, no output directory) followed by the template command's printing of manifests then hooks.
func render(ch *chart.Chart, vals common.Values, caps *common.Capabilities) (string, error) {
	if ch.Metadata.KubeVersion != "" && !chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, caps.KubeVersion.String()) {
		return "", fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s",
			ch.Metadata.KubeVersion, caps.KubeVersion.Version)
	}
	var e engine.Engine
	files, err := e.RenderWithContext(context.Background(), ch, vals)
	if err != nil {
		return "", err
	}
	for k := range files {
		if strings.HasSuffix(k, "NOTES.txt") {
			delete(files, k)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return "", err
	}
	var doc strings.Builder
	for _, m := range manifests {
		fmt.Fprintf(&doc, "---\n# Source: %s\n%s\n", m.Name, m.Content)
	}
	var out strings.Builder
	fmt.Fprintln(&out, strings.TrimSpace(doc.String()))
	for _, h := range hooks {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", h.Path, h.Manifest)
	}
	return out.String(), nil
}

// lintChart is helm's lint command for one chart directory: every message printed, and with --strict
// a warning fails it as an error does.
func lintChart(o options) error {
	if len(o.positional) != 1 {
		return errors.New("lint needs one CHART directory")
	}
	chartPath := o.positional[0]
	vals, err := o.values()
	if err != nil {
		return err
	}
	if _, err := os.Stat(path.Join(chartPath, "Chart.yaml")); err != nil {
		return fmt.Errorf("unable to check Chart.yaml file in chart: %w", err)
	}
	tolerance := support.ErrorSev
	if o.strict {
		tolerance = support.WarningSev
	}
	linter := lint.RunAll(chartPath, vals, namespace, lint.WithKubeVersion(nil))
	failed := 0
	fmt.Printf("==> Linting %s\n", chartPath)
	for _, msg := range linter.Messages {
		fmt.Printf("%s\n", msg)
		if msg.Severity >= tolerance {
			failed = 1
		}
	}
	fmt.Print("\n")
	summary := fmt.Sprintf("1 chart(s) linted, %d chart(s) failed", failed)
	if failed > 0 {
		return errors.New(summary)
	}
	fmt.Println(summary)
	return nil
}
