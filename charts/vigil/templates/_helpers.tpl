{{- define "vigil.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vigil.labels" -}}
app.kubernetes.io/name: vigil
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Whether the agent reads a configuration file (sinks or aggregation are set). */}}
{{- define "vigil.configured" -}}
{{- if or .Values.sinks .Values.aggregation -}}true{{- end -}}
{{- end -}}

{{/* The environment variable holding a Splunk HEC sink's token. */}}
{{- define "vigil.tokenEnv" -}}
{{- printf "VIGIL_SINK_%s_TOKEN" (.name | upper | replace "-" "_") -}}
{{- end -}}

{{/* The agent's configuration file: the sinks of the values, with the paths and secret
references the chart chooses. */}}
{{- define "vigil.config" -}}
{{- $sinks := list -}}
{{- range .Values.sinks -}}
{{- $sink := omit . "webhookUrl" "token" "spool" "ca" -}}
{{- if .ca -}}
{{- $_ := set $sink "caFile" (printf "/etc/vigil/ca/%s/%s" .name .ca.key) -}}
{{- end -}}
{{- if eq .type "slack" -}}
{{- $_ := set $sink "webhookUrlFile" (printf "/etc/vigil/secrets/%s/%s" .name .webhookUrl.key) -}}
{{- end -}}
{{- if eq .type "splunk-hec" -}}
{{- $_ := set $sink "tokenEnv" (include "vigil.tokenEnv" .) -}}
{{- end -}}
{{- if .spool -}}
{{- $_ := set $sink "spool" (dict "dir" (printf "/var/lib/vigil/spool/%s" .name) "maxBytes" .spool.maxBytes) -}}
{{- end -}}
{{- $sinks = append $sinks $sink -}}
{{- end -}}
{{- if not $sinks -}}
{{- $sinks = list (dict "name" "stdout" "type" "stdout" "format" .Values.output) -}}
{{- end -}}
{{- $config := dict "sinks" $sinks -}}
{{- with .Values.aggregation -}}
{{- $_ := set $config "aggregation" . -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Whether any sink of the values has this type, or a spool ("spool"). */}}
{{- define "vigil.anySink" -}}
{{- $want := .want -}}
{{- range .sinks -}}
{{- if or (eq .type $want) (and (eq $want "spool") .spool) -}}true{{- end -}}
{{- end -}}
{{- end -}}
