// The anywidget timeline module in casparian_nb/notebook/static (resolved by the webpack alias
// in webpack.config.js): render({model, el}) draws on el and returns its cleanup.
declare module '@casparian/static/timeline.js' {
  export interface TimelineModel {
    get(name: string): any;
    on(event: string, callback: (value?: any) => void): void;
    send(message: Record<string, unknown>): void;
  }
  const timeline: { render(args: { model: TimelineModel; el: HTMLElement }): () => void };
  export default timeline;
}
