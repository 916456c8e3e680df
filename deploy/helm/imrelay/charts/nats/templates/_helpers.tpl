{{- define "nats.fullname" -}}
{{- printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nats.selector" -}}
app.kubernetes.io/name: nats
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nats.labels" -}}
{{ include "nats.selector" . }}
app.kubernetes.io/part-of: imrelay
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "nats.imageOf" -}}
{{- if .digest }}{{ .repository }}@{{ .digest }}{{ else }}{{ .repository }}:{{ .tag }}{{ end }}
{{- end }}

{{- /* Objects of an API the cluster may lack (CRDs): rendered only where it is served, else a clear failure
       naming the value to turn off */ -}}
{{- define "nats.requireApi" -}}
{{- $caps := .root.Capabilities.APIVersions -}}
{{- if not (or ($caps.Has (printf "%s/%s" .api .kind)) ($caps.Has .api)) -}}
{{- fail (printf "%s=true needs the %s API (%s), which this cluster does not serve: install %s first, or set %s=false (helm template: pass --api-versions %s/%s)" .value .kind .api .from .value .api .kind) -}}
{{- end -}}
{{- end }}

{{- define "nats.image" -}}
{{- if .Values.image.digest }}{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else }}{{ .Values.image.repository }}:{{ .Values.image.tag }}{{ end }}
{{- end }}

{{- /* nats.conf: every node reads the same file; $POD_NAME names each one */ -}}
{{- define "nats.conf" -}}
{{- $full := include "nats.fullname" . -}}
server_name: $POD_NAME
listen: 0.0.0.0:4222
http: 0.0.0.0:8222
pid_file: /var/run/nats/nats.pid
# a stopping node (preStop: lame-duck mode) moves its clients and stream leaders away before it exits
lame_duck_grace_period: 10s
lame_duck_duration: 30s
jetstream {
  store_dir: /data
  max_file_store: {{ .Values.jetstream.maxFileStore }}
  max_memory_store: {{ .Values.jetstream.maxMemoryStore }}
  {{- if .Values.encryption.enabled }}
  # files at rest encrypted; the key comes from the auth Secret through the environment
  cipher: chachapoly
  key: $NATS_JETSTREAM_KEY
  {{- end }}
}
{{- if .Values.tls.enabled }}
tls {
  cert_file: /etc/nats-tls/tls.crt
  key_file: /etc/nats-tls/tls.key
  timeout: 3
}
{{- end }}
{{- if .Values.auth.enabled }}
{{ include "nats.imrelayAuthorization" . }}
{{- end }}
{{- if gt (int .Values.replicas) 1 }}
cluster {
  name: {{ $full }}
  listen: 0.0.0.0:6222
  no_advertise: true
  routes: [
    {{- range $i, $_ := until (int .Values.replicas) }}
    nats://{{ $full }}-{{ $i }}.{{ $full }}-headless:6222
    {{- end }}
  ]
}
{{- end }}
{{- end }}

{{- define "nats.authSecretName" -}}{{ include "nats.fullname" . }}-auth{{- end }}
{{- define "nats.tlsSecretName" -}}{{ .Values.tls.secretName | default (printf "%s-tls" (include "nats.fullname" .)) }}{{- end }}

{{- /* the auth Secret's data: random at install, kept across upgrades */ -}}
{{- define "nats.authSecretData" -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace (include "nats.authSecretName" .) -}}
{{- if $old }}{{ $old.data | toYaml }}
{{- else }}
{{- range $svc := list "INGRESS" "CONNECTOR" "WORKER" "SENDER" "CLI" }}
IMRELAY_NATS_PASSWORD_{{ $svc }}: {{ randAlphaNum 32 | b64enc }}
{{- end }}
NATS_JETSTREAM_KEY: {{ randAlphaNum 48 | b64enc }}
{{- end }}
{{- end }}
