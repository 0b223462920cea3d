{{/* The catalogue: .Values.catalogue, else the chart's catalogue.yaml (`edgestream k8s generate`). */}}
{{- define "edgestream.catalogue" -}}
{{- $catalogue := .Values.catalogue -}}
{{- if not $catalogue -}}
{{- $catalogue = (.Files.Get "catalogue.yaml" | fromYaml).catalogue -}}
{{- end -}}
{{- if not $catalogue.regions -}}
{{- fail "no catalogue: catalogue.yaml is missing from the chart and no `catalogue` value is given (edgestream k8s generate)" -}}
{{- end -}}
{{- $names := list -}}
{{- range $catalogue.regions }}{{ $names = append $names .name }}{{ end -}}
{{- range $name, $_ := .Values.edge.regions -}}
{{- if not (has $name $names) -}}
{{- fail (printf "edge.regions.%s: not a region of the catalogue (%s)" $name (join ", " $names)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $catalogue -}}
{{- end -}}

{{/* A region's edge settings: edge, overridden by edge.regions.<region>. Call with (list $ region). */}}
{{- define "edgestream.edgeSettings" -}}
{{- $root := index . 0 -}}
{{- $region := index . 1 -}}
{{- $base := omit (deepCopy $root.Values.edge) "regions" -}}
{{- $override := deepCopy (index $root.Values.edge.regions $region.name | default dict) -}}
{{- toYaml (mergeOverwrite $base $override) -}}
{{- end -}}

{{/* The region's ingest partitions, all kinds together: the most workers of its group that get work. */}}
{{- define "edgestream.ingestPartitions" -}}
{{- $total := 0 -}}
{{- range .ingest }}{{ $total = add $total .partitions }}{{ end -}}
{{- $total -}}
{{- end -}}

{{- define "edgestream.labels" -}}
app.kubernetes.io/name: edgestream
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one workload. Call with (list $ component region-or-empty). */}}
{{- define "edgestream.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: edgestream
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- if index . 2 }}
edgestream.io/region: {{ index . 2 }}
{{- end }}
{{- end -}}

{{- define "edgestream.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "edgestream.clusterCaSecret" -}}
{{- .Values.kafka.clusterCaSecret | default (printf "%s-cluster-ca-cert" .Values.strimzi.cluster) -}}
{{- end -}}

{{/* Volumes of one principal's TLS identity: its Strimzi user secret and the cluster CA. (list $ user) */}}
{{- define "edgestream.tlsVolumes" -}}
- name: kafka-identity
  secret:
    secretName: {{ index . 1 }}
    defaultMode: 0440  # group: the pod's fsGroup (the process runs as a non-root user)
    items:
      - {key: user.crt, path: user.crt}
      - {key: user.key, path: user.key}
- name: kafka-ca
  secret:
    secretName: {{ include "edgestream.clusterCaSecret" (index . 0) }}
    items:
      - {key: ca.crt, path: ca.crt}
{{- end -}}

{{- define "edgestream.tlsMounts" -}}
- {name: kafka-identity, mountPath: /etc/edgestream/kafka/identity, readOnly: true}
- {name: kafka-ca, mountPath: /etc/edgestream/kafka/ca, readOnly: true}
{{- end -}}

{{/* The Kafka client settings of a process whose variables start with the given prefix. */}}
{{- define "edgestream.kafkaEnv" -}}
{{- $root := index . 0 -}}
{{- $prefix := index . 1 -}}
- {name: {{ $prefix }}BOOTSTRAP_SERVERS, value: {{ $root.Values.kafka.bootstrapServers | quote }}}
- {name: {{ $prefix }}SECURITY_PROTOCOL, value: SSL}
- {name: {{ $prefix }}SSL_CA_FILE, value: /etc/edgestream/kafka/ca/ca.crt}
- {name: {{ $prefix }}SSL_CERT_FILE, value: /etc/edgestream/kafka/identity/user.crt}
- {name: {{ $prefix }}SSL_KEY_FILE, value: /etc/edgestream/kafka/identity/user.key}
{{- end -}}

{{- define "edgestream.extraEnv" -}}
{{- range $name, $value := . }}
- {name: {{ $name }}, value: {{ $value | toString | quote }}}
{{- end }}
{{- end -}}

{{/* A pod's labels: its selector and the chart's version labels. (list $ component region-or-empty) */}}
{{- define "edgestream.podLabels" -}}
{{- $root := index . 0 -}}
{{ include "edgestream.selector" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version }}
{{- end -}}

{{/* Where workers fetch artifacts: registry.url, else this release's artifact server. */}}
{{- define "edgestream.registryUrl" -}}
{{- if .Values.registry.url -}}
{{- .Values.registry.url -}}
{{- else if .Values.registry.enabled -}}
{{- printf "https://%s-registry:%v" .Release.Name .Values.registry.port -}}
{{- else -}}
{{- fail "edge.followRegistry needs registry.url (the artifact server workers fetch from) or registry.enabled" -}}
{{- end -}}
{{- end -}}
