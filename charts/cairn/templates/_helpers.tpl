{{/* Name prefix of every object. */}}
{{- define "cairn.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains "cairn" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-cairn" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object; pass (dict "ctx" $ "component" "meta"). */}}
{{- define "cairn.labels" -}}
app.kubernetes.io/name: cairn
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/component: {{ .component }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version }}
{{- end -}}

{{/* Selector labels; pass (dict "ctx" $ "component" "meta"). */}}
{{- define "cairn.selector" -}}
app.kubernetes.io/name: cairn
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cairn.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "cairn.tlsSecret" -}}
{{- default (printf "%s-tls" (include "cairn.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{- define "cairn.s3Secret" -}}
{{- default (printf "%s-s3-admin" (include "cairn.fullname" .)) .Values.objectd.adminKey.existingSecret -}}
{{- end -}}

{{/* The metadata voters' API endpoints, comma-separated (what every client's --meta takes). */}}
{{- define "cairn.metaEndpoints" -}}
{{- $name := printf "%s-meta" (include "cairn.fullname" .) -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.meta.replicas) -}}
{{- $eps = append $eps (printf "%s-%d.%s.%s.svc.%s:7710" $name $i $name $.Release.Namespace $.Values.clusterDomain) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}

{{/* The first voters: ID=API/PEER for every ordinal. */}}
{{- define "cairn.metaInitialMembers" -}}
{{- $name := printf "%s-meta" (include "cairn.fullname" .) -}}
{{- $m := list -}}
{{- range $i := until (int .Values.meta.replicas) -}}
{{- $host := printf "%s-%d.%s.%s.svc.%s" $name $i $name $.Release.Namespace $.Values.clusterDomain -}}
{{- $m = append $m (printf "%d=%s:7710/%s:7711" (add1 $i) $host $host) -}}
{{- end -}}
{{- join "," $m -}}
{{- end -}}

{{/* The mutual-TLS flags; pass the context. */}}
{{- define "cairn.tlsArgs" -}}
{{- if .Values.tls.enabled }}
- --tls-ca=/etc/cairn/tls/ca.crt
- --tls-cert=/etc/cairn/tls/tls.crt
- --tls-key=/etc/cairn/tls/tls.key
{{- end }}
{{- end -}}

{{- define "cairn.tlsMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/cairn/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "cairn.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "cairn.tlsSecret" . }}
    defaultMode: 0400
{{- end }}
{{- end -}}

{{- define "cairn.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}
